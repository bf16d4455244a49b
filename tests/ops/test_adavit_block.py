"""ops/adavit_block.py: AdaViT's decisions and its sub-layers computed on kept rows and heads only.

Oracles, shared with no tokcompile code: the decisions as methods-reference §5.2 writes them, in
float64; the block as the official code computes it, dense with masks
(``reference_adavit.masked_block``), on a timm DeiT block of the zoo's test_vit, with random
token, head and sub-layer decisions (every kind skipped for some image). The compacted rows come
from ``compact_tokens`` (tested on its own in test_compact_tokens.py), at the full width and cut
to the batch's largest count, as the staged runtime cuts them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_adavit import masked_block
from reference_vit import embed_tokens

from tokcompile.ops.adavit_block import (
    adavit_attention,
    adavit_decide,
    adavit_mlp,
    compacted_position,
    decision_outputs,
    kept_rows,
    sublayer_rows,
)
from tokcompile.ops.compact_tokens import compact_tokens
from tokcompile.ops.padded_tokens import valid_prefix

BLOCK_ATOL = 1e-5  # fp32: gathered rows and heads with fused SDPA vs dense masks and -inf logits
B = 6


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_decisions_follow_the_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    N, C, H = 17, 16, 4
    x = torch.randn(B, N, C, generator=g)
    norm_w, norm_b = 1 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g)
    sizes = decision_outputs(H)
    assert sizes == {"tokens": 1, "heads": H, "layers": 2}
    w = {kind: torch.randn(n, C, generator=g) for kind, n in sizes.items()}
    b = {kind: 0.3 * torch.randn(n, generator=g) for kind, n in sizes.items()}
    thresholds = (0.6, 0.5, 0.45)
    tokens, heads, layers = adavit_decide(
        x,
        norm_w,
        norm_b,
        1e-6,
        w["tokens"],
        b["tokens"],
        w["heads"],
        b["heads"],
        w["layers"],
        b["layers"],
        H,
        *thresholds,
    )
    xd = x.double().numpy()
    mean, var = xd.mean(-1, keepdims=True), xd.var(-1, keepdims=True)
    ln = (xd - mean) / np.sqrt(var + 1e-6) * norm_w.double().numpy() + norm_b.double().numpy()
    lin = {kind: (w[kind].double().numpy(), b[kind].double().numpy()) for kind in sizes}
    expected_tokens = sigmoid(ln[:, 1:] @ lin["tokens"][0].T + lin["tokens"][1])[..., 0] > thresholds[0]
    expected_heads = sigmoid(xd[:, 0] @ lin["heads"][0].T + lin["heads"][1]) > thresholds[1]
    expected_layers = sigmoid(xd[:, 0] @ lin["layers"][0].T + lin["layers"][1]) > thresholds[2]
    assert tokens[:, 0].all() and tokens[:, 1:].numpy().tolist() == expected_tokens.tolist()
    assert heads.numpy().tolist() == expected_heads.tolist() and layers.numpy().tolist() == expected_layers.tolist()
    assert 0 < expected_tokens.mean() < 1 and 0 < expected_heads.mean() < 1  # both outcomes occur
    # no head/layer selector (blocks before keep_layers): every head and sub-layer runs
    _, heads, layers = adavit_decide(
        x, norm_w, norm_b, 1e-6, w["tokens"], b["tokens"], None, None, None, None, H, *thresholds
    )
    assert heads.shape == (B, H) and heads.all() and layers.shape == (B, 2) and layers.all()


def test_row_bookkeeping_follows_the_contract() -> None:
    tokens = torch.tensor([[True, False, True, True, False], [False, True, False, False, True]])
    layers = torch.tensor([[True, False], [False, True]])
    for sub in (0, 1):
        rows = sublayer_rows(tokens, layers, sub)
        expected = [
            [p == 0 or (t and bool(layers[b, sub])) for p, t in enumerate(row)] for b, row in enumerate(tokens.tolist())
        ]
        assert rows.tolist() == expected
    keep = torch.tensor([[True, False, True, True, False], [True, False, False, False, True]])
    expected_position = [
        [row[: p + 1].count(True) - 1 if k else -1 for p, k in enumerate(row)] for row in keep.tolist()
    ]
    assert compacted_position(keep).tolist() == expected_position
    rows = torch.tensor([[0, 2, 3, 1], [0, 4, 1, 2]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert kept_rows(rows, valid).tolist() == [[0, 2, 3, -1], [0, 4, -1, -1]]


def compact(keep: torch.Tensor, cut: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, valid, count) of ``keep``, at full width or cut to the largest count (the runtime's cut)."""
    rows, count = compact_tokens(keep)
    if cut:
        rows = rows[:, : max(1, int(count.max()))]
    return rows, valid_prefix(rows, count), count


@pytest.mark.parametrize("cut", [False, True])
def test_block_on_kept_rows_equals_the_official_masked_block(models, cut: bool) -> None:
    model, spec = models("test_vit")
    blk = model.blocks[2]
    H = blk.attn.num_heads
    g = torch.Generator().manual_seed(4)
    images = torch.randn(B, 3, *spec.img_size, generator=g)
    with torch.no_grad():
        x = embed_tokens(model, images)
        x = model.blocks[1](model.blocks[0](x))
    N = x.shape[1]
    tokens = torch.rand(B, N, generator=g) < 0.6
    tokens[:, 0] = True
    heads = torch.rand(B, H, generator=g) < 0.6
    heads[0] = False  # an image without any head
    layers = torch.rand(B, 2, generator=g) < 0.7
    layers[1] = torch.tensor([False, True])
    layers[2] = torch.tensor([True, False])
    keep_a, keep_m = sublayer_rows(tokens, layers, 0), sublayer_rows(tokens, layers, 1)
    rows_a, valid_a, _ = compact(keep_a, cut)
    rows_m, valid_m, _ = compact(keep_m, cut)
    head_rows, head_valid, _ = compact(heads, cut)
    a, mlp = blk.attn, blk.mlp
    with torch.no_grad():
        x1 = adavit_attention(
            x, rows_a, valid_a, compacted_position(keep_a), head_rows, head_valid, layers,
            blk.norm1.weight, blk.norm1.bias, blk.norm1.eps,
            a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias, H,
        )  # fmt: skip
        got = adavit_mlp(
            x1, rows_m, valid_m, compacted_position(keep_m), heads, layers,
            blk.norm2.weight, blk.norm2.bias, blk.norm2.eps,
            mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias,
        )  # fmt: skip
        expected = masked_block(blk, x, tokens.float(), heads.float(), layers.float())
    assert got.shape == x.shape
    err = (got - expected).abs().max().item()
    assert err <= BLOCK_ATOL, f"max abs error {err:.2e} > {BLOCK_ATOL}"
    # every kind of skipping happened: the block differs from the dense one
    with torch.no_grad():
        assert (got - blk(x)).abs().max() > 1e-2


def test_every_head_without_gates_is_the_dense_block(models) -> None:
    """heads None (blocks before keep_layers), every token and sub-layer on: timm's own block."""
    model, spec = models("test_vit")
    blk = model.blocks[0]
    with torch.no_grad():
        x = embed_tokens(model, torch.randn(2, 3, *spec.img_size, generator=torch.Generator().manual_seed(6)))
        keep = torch.ones(x.shape[:2], dtype=torch.bool)
        layers = torch.ones(2, 2, dtype=torch.bool)
        rows, valid, _ = compact(keep, False)
        position = compacted_position(keep)
        a, mlp = blk.attn, blk.mlp
        x1 = adavit_attention(
            x, rows, valid, position, None, None, layers, blk.norm1.weight, blk.norm1.bias, blk.norm1.eps,
            a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias, a.num_heads,
        )  # fmt: skip
        got = adavit_mlp(
            x1, rows, valid, position, torch.ones(2, a.num_heads, dtype=torch.bool), layers,
            blk.norm2.weight, blk.norm2.bias, blk.norm2.eps, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias,
        )  # fmt: skip
        torch.testing.assert_close(got, blk(x), atol=BLOCK_ATOL, rtol=0)
