"""ops/padded_tokens.py and ops/token_ids.py: padded token bookkeeping, each function against its
contract read literally (Python loops over the rows), and the key-padding bias through attention:
fused attention with it equals each image's float64 attention over its real keys alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokcompile.ops.padded_tokens import all_valid, gather_tokens, key_padding_bias, positions, valid_prefix
from tokcompile.ops.token_ids import compose_merge_map, gather_token_ids, initial_ids, sampled_ids

G = torch.Generator().manual_seed(0)


def test_all_valid_and_positions() -> None:
    x = torch.randn(3, 7, 2)
    assert all_valid(x).shape == (3, 7) and all_valid(x).dtype == torch.bool and all_valid(x).all()
    assert positions(torch.zeros(2, 5, dtype=torch.bool)).tolist() == [list(range(5))] * 2


def test_gather_tokens_and_valid_prefix() -> None:
    x = torch.randn(2, 6, 3, generator=G)
    rows = torch.tensor([[5, 0, 2, 2], [1, 3, 4, 0]])
    got = gather_tokens(x, rows)
    assert got.shape == (2, 4, 3)
    for b in range(2):
        for i, r in enumerate(rows[b].tolist()):
            assert torch.equal(got[b, i], x[b, r])
    count = torch.tensor([3, 0])
    assert valid_prefix(rows, count).tolist() == [[True, True, True, False], [False] * 4]


def test_key_padding_bias_masks_padded_keys() -> None:
    B, H, n, hd = 3, 2, 9, 4
    q, k, v = (torch.randn(B, H, n, hd, generator=G) for _ in range(3))
    count = [9, 4, 1]
    valid = torch.arange(n)[None, :] < torch.tensor(count)[:, None]
    k[~valid[:, None, :].expand(B, H, n)] = 50.0  # junk keys that would dominate if not masked
    bias = key_padding_bias(valid, q.half())
    assert bias.shape == (B, 1, 1, n) and bias.dtype == torch.float16
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.float())
    for b, c in enumerate(count):
        logits = q[b].double() @ k[b, :, :c].double().transpose(-2, -1) * hd**-0.5
        expected = logits.softmax(-1) @ v[b, :, :c].double()
        torch.testing.assert_close(got[b].double(), expected, atol=1e-6, rtol=0)


def test_original_token_ids() -> None:
    ids = initial_ids(torch.zeros(2, 5, 3))
    assert ids.dtype == torch.int64 and ids.tolist() == [[0, 1, 2, 3, 4]] * 2
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    rows = torch.tensor([[0, 3, 1], [0, 2, 2]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert sampled_ids(ids, rows, valid).tolist() == [[10, 13, -1], [20, 22, 22]]


def test_kept_ids_of_a_token_op() -> None:
    """P prefix ids first, then the kept tokens' ids; a token appended after them (EViT's fused one) is -1."""
    ids = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    kept_pos = torch.tensor([[4, 2], [1, 5]])
    out_ids, kept = gather_token_ids(ids, kept_pos, torch.zeros(2, 1 + 2 + 1, 8), 1)
    assert kept.tolist() == [[4, 2], [1, 5]]
    assert out_ids.tolist() == [[0, 4, 2, -1], [0, 1, 5, -1]]
    out_ids, _ = gather_token_ids(ids, kept_pos, torch.zeros(2, 3, 8), 1)  # no fused token
    assert out_ids.tolist() == [[0, 4, 2], [0, 1, 5]]


def test_merge_maps_compose() -> None:
    previous = torch.tensor([[0, 1, 1, 2, 3]])  # original token → position after merge 1
    dest = torch.tensor([[0, 0, 1, 2]])  # merge 2: position of each of its 4 input tokens
    assert compose_merge_map(previous, dest).tolist() == [[dest[0, p].item() for p in previous[0].tolist()]]
