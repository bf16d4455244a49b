"""tokcompile::evit_select against the official EViT semantics (methods-reference.md §1.2).

``official_select`` below is written from the reference pseudocode the way the official code
(youweiliang/evit ``Block.forward`` + ``helpers.complement_idx``) computes it: complement
indices in ascending original order, then ``sum(non_topk * weight)``. It shares no code with
``tokcompile.ops.evit_select`` (which uses a scatter + bmm instead).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from function_body import run_function_body
from onnx import TensorProto, helper
from torch._subclasses.fake_tensor import FakeTensorMode

from tokcompile.errors import TokcompileError
from tokcompile.ops.evit_select import ONNX_NAME, evit_select, evit_select_reference, keep_count, onnx_function

FP32_ATOL = 1e-6


def official_select(
    x: torch.Tensor, attn: torch.Tensor, keep_rate: float, fuse: bool, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, N, C], attn: [B, H, N] CLS rows → ([B, P + k + fuse, C], kept positions [B, k])."""
    B, N, C = x.shape
    P = num_prefix
    k = math.ceil(keep_rate * (N - P))
    if k == N - P:  # the official layer returns early: no selection, no fused token
        return x, torch.arange(P, N).expand(B, N - P)
    s = attn.float().mean(dim=1)[:, P:]  # [B, N-P]
    _, idx = torch.topk(s, k, dim=1, largest=True, sorted=True)
    non_cls = x[:, P:]
    kept = torch.gather(non_cls, 1, idx.unsqueeze(-1).expand(-1, -1, C))
    parts = [x[:, :P], kept]
    if fuse:
        # helpers.complement_idx: the indices not in idx, in ascending order.
        keep_mask = torch.zeros(B, N - P, dtype=torch.bool)
        keep_mask[torch.arange(B).unsqueeze(1), idx] = True
        compl = torch.stack([torch.nonzero(~row).squeeze(1) for row in keep_mask])  # [B, N-P-k]
        assert bool((compl[:, 1:] > compl[:, :-1]).all())
        non_topk = torch.gather(non_cls, 1, compl.unsqueeze(-1).expand(-1, -1, C)).float()
        non_topk_attn = torch.gather(s, 1, compl)  # raw weights, NOT renormalised
        extra = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)
        parts.append(extra.to(x.dtype))
    return torch.cat(parts, dim=1), idx + P


def random_inputs(B: int, H: int, N: int, C: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=gen)
    # A post-softmax CLS row per head; the 3x spreads it so top-k has clear gaps.
    attn = (3 * torch.randn(B, H, N, generator=gen)).softmax(dim=-1)
    return x, attn


CASES = [
    # (keep_rate, fuse, num_prefix, N)
    (0.7, True, 1, 197),
    (0.7, False, 1, 197),
    (0.5, True, 2, 66),
    (0.5, False, 2, 66),
    (0.6, True, 1, 101),
    (0.05, True, 1, 50),  # k = 3: almost everything fused
    (1.0, True, 1, 50),  # k == N - P: identity
    (1.0, False, 2, 50),
    (0.999, True, 1, 50),  # ceil(0.999 * 49) = 49 == N - P: identity as well
]


@pytest.mark.parametrize(("keep_rate", "fuse", "num_prefix", "N"), CASES)
def test_op_matches_reference_and_official(keep_rate: float, fuse: bool, num_prefix: int, N: int) -> None:
    x, attn = random_inputs(3, 4, N, 32, seed=N + num_prefix)
    out, kept = evit_select(x, attn, keep_rate, fuse, num_prefix)
    ref_out, ref_kept = evit_select_reference(x, attn, keep_rate, fuse, num_prefix)
    off_out, off_kept = official_select(x, attn, keep_rate, fuse, num_prefix)

    k = math.ceil(keep_rate * (N - num_prefix))
    identity = k == N - num_prefix
    assert out.shape == (3, N if identity else num_prefix + k + int(fuse), 32)
    assert kept.shape == (3, k) and kept.dtype == torch.int64
    assert torch.equal(kept, ref_kept) and torch.equal(kept, off_kept)
    torch.testing.assert_close(out, ref_out, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(out, off_out, atol=FP32_ATOL, rtol=0)
    # Prefix tokens pass through untouched and kept tokens are exact copies.
    assert torch.equal(out[:, :num_prefix], x[:, :num_prefix])
    assert torch.equal(out[:, num_prefix : num_prefix + k], torch.gather(x, 1, kept.unsqueeze(-1).expand(-1, -1, 32)))
    if identity:
        assert torch.equal(out, x)


def test_kept_positions_descend_by_score_and_skip_prefix() -> None:
    x, attn = random_inputs(2, 3, 40, 8, seed=7)
    _, kept = evit_select(x, attn, 0.5, True, 2)
    scores = attn.mean(dim=1).gather(1, kept)
    assert bool((kept >= 2).all())
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert all(len(set(row.tolist())) == row.numel() for row in kept)


def test_fused_token_uses_raw_weights() -> None:
    """The fused token is Σ s_j x_j over dropped j, weights not renormalised (§1.2 surprise)."""
    B, N, C = 1, 5, 2
    x = torch.arange(B * N * C, dtype=torch.float32).reshape(B, N, C)
    attn = torch.tensor([[[0.2, 0.4, 0.1, 0.25, 0.05]]])  # one head; scores of tokens 1..4
    out, kept = evit_select(x, attn, 0.5, True, 1)  # k = 2: keep tokens 1 (0.4) and 3 (0.25)
    assert kept.tolist() == [[1, 3]]
    expected_extra = 0.1 * x[0, 2] + 0.05 * x[0, 4]  # weights sum to 0.15, not 1
    torch.testing.assert_close(out[0, -1], expected_extra, atol=FP32_ATOL, rtol=0)
    assert torch.equal(out[0, :3], x[0, [0, 1, 3]])


# ----------------------------------------------------------------------------- keep_count


def test_keep_count_is_float64() -> None:
    # 0.6 * 100 is exactly 60.0 in float64 but 60.000004 in float32 (methods-reference §7.1).
    assert keep_count(0.6, 101, 1) == 60
    f32 = torch.tensor(0.6, dtype=torch.float32) * torch.tensor(100.0, dtype=torch.float32)
    assert int(torch.ceil(f32)) == 61  # the off-by-one that float32 arithmetic would give


def test_keep_count_matches_python_ceil() -> None:
    for n in range(2, 577):
        for keep in (0.1, 0.25, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
            assert keep_count(keep, n + 1, 1) == math.ceil(keep * n)


@pytest.mark.parametrize(
    ("keep_rate", "fuse", "expected"),
    [
        (0.7, True, [140, 100, 72]),
        (0.7, False, [139, 98, 69]),
        (0.5, True, [100, 52, 28]),
        (0.9, True, [179, 163, 148]),
    ],
)
def test_keep_count_reproduces_official_token_table(keep_rate: float, fuse: bool, expected: list[int]) -> None:
    """methods-reference §1.2 table: DeiT at 224, layers 3/6/9, counts verified on the official code."""
    n, seq = 197, []
    for _ in range(3):
        n = 1 + keep_count(keep_rate, n, 1) + int(fuse)
        seq.append(n)
    assert seq == expected


def test_keep_count_rejects_symbolic_token_count() -> None:
    with pytest.raises(TokcompileError, match="static token count"):
        keep_count(0.7, 197.0, 1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fake kernel


@pytest.mark.parametrize(
    ("keep_rate", "fuse", "num_prefix", "N", "out_tokens", "k"),
    [
        (0.7, True, 1, 197, 140, 138),
        (0.7, False, 1, 197, 139, 138),
        (0.7, True, 1, 140, 100, 98),
        (0.5, True, 2, 66, 35, 32),
        (1.0, True, 1, 50, 50, 49),  # identity: no fused token
    ],
)
def test_fake_kernel_shapes(keep_rate: float, fuse: bool, num_prefix: int, N: int, out_tokens: int, k: int) -> None:
    with FakeTensorMode():
        x = torch.empty(4, N, 24, dtype=torch.float16)
        attn = torch.empty(4, 3, N, dtype=torch.float32)
        out, kept = evit_select(x, attn, keep_rate, fuse, num_prefix)
    assert tuple(out.shape) == (4, out_tokens, 24) and out.dtype == torch.float16
    assert tuple(kept.shape) == (4, k) and kept.dtype == torch.int64
    # The fake kernel agrees with a real run.
    real_out, real_kept = evit_select(*random_inputs(4, 3, N, 24, seed=0), keep_rate, fuse, num_prefix)
    assert real_out.shape == out.shape and real_kept.shape == kept.shape


@pytest.mark.parametrize(("keep_rate", "fuse", "num_prefix"), [(0.7, True, 1), (0.5, False, 2), (1.0, True, 1)])
def test_opcheck(keep_rate: float, fuse: bool, num_prefix: int) -> None:
    """torch.library consistency checks (schema, fake vs real, AOT with static shapes).

    test_aot_dispatch_dynamic is left out on purpose: the token count must be static
    (keep_count raises on a symbolic N), only the batch is dynamic at export.
    """
    x, attn = random_inputs(2, 3, 30, 8, seed=3)
    torch.library.opcheck(
        torch.ops.tokcompile.evit_select.default,
        (x, attn, keep_rate, fuse, num_prefix),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static"),
    )


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("fuse", [True, False])
def test_fp16_tokens_score_in_fp32(fuse: bool) -> None:
    """fp16 tokens with fp32 attention: same scores, so the same selection as the fp32 run."""
    x, attn = random_inputs(3, 4, 101, 32, seed=11)
    x16 = x.half()
    out16, kept16 = evit_select(x16, attn, 0.7, fuse, 1)
    out32, kept32 = evit_select(x16.float(), attn, 0.7, fuse, 1)
    assert out16.dtype == torch.float16 and kept16.dtype == torch.int64
    assert torch.equal(kept16, kept32)
    # Kept tokens are copies; the fused token is summed in fp32 and rounded once to fp16, so the
    # fp16 run equals the fp32 run on the same (upcast) values, rounded at the end.
    assert torch.equal(out16, out32.half())
    off_out, off_kept = official_select(x16, attn, 0.7, fuse, 1)
    assert torch.equal(kept16, off_kept)
    torch.testing.assert_close(out16.float(), off_out.float(), atol=1e-3, rtol=0)


def test_fp16_attention_is_upcast_before_scoring() -> None:
    """An fp16 CLS row selects what its exact fp32 upcast selects (mean over heads in fp32)."""
    x, attn = random_inputs(3, 4, 101, 32, seed=12)
    attn16 = attn.half()
    out_a, kept_a = evit_select(x, attn16, 0.7, True, 1)
    out_b, kept_b = evit_select(x, attn16.float(), 0.7, True, 1)
    assert torch.equal(kept_a, kept_b)
    torch.testing.assert_close(out_a, out_b, atol=FP32_ATOL, rtol=0)


# ----------------------------------------------------------------------------- ONNX function body


def _run_body(x: torch.Tensor, attn: torch.Tensor, k: int, P: int, fuse: bool) -> list[np.ndarray]:
    """One EvitSelect node calling its function body, run by ONNX Runtime (batch symbolic)."""
    B, N, C = x.shape
    node = helper.make_node(ONNX_NAME, ["x", "attn"], ["out", "kept"], domain="tokcompile", k=k, num_prefix=P)
    node.attribute.append(helper.make_attribute("fuse", int(fuse)))
    return run_function_body(
        onnx_function,
        node,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", N, C]),
            helper.make_tensor_value_info("attn", TensorProto.FLOAT, ["B", attn.shape[1], N]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", P + k + int(fuse), C]),
            helper.make_tensor_value_info("kept", TensorProto.INT64, ["B", k]),
        ],
        {"x": x.numpy(), "attn": attn.numpy()},
    )


@pytest.mark.parametrize(
    ("keep_rate", "fuse", "num_prefix", "N"),
    [(0.7, True, 1, 197), (0.7, False, 1, 197), (0.5, True, 0, 64), (0.5, False, 0, 64), (0.6, True, 5, 101)],
)
def test_onnx_body_matches_reference(keep_rate: float, fuse: bool, num_prefix: int, N: int) -> None:
    """The body (no Slice: the prefix and the 0/1 fused row are Gathers) against the op, with no,
    one and several prefix tokens, fused or not."""
    x, attn = random_inputs(3, 4, N, 16, seed=N + num_prefix)
    k = keep_count(keep_rate, N, num_prefix)
    out, kept = _run_body(x, attn, k, num_prefix, fuse)
    ref_out, ref_kept = evit_select_reference(x, attn, keep_rate, fuse, num_prefix)
    np.testing.assert_array_equal(kept, ref_kept.numpy())
    np.testing.assert_allclose(out, ref_out.numpy(), atol=FP32_ATOL, rtol=0)
    types = {n.op_type for n in onnx_function(18).to_function_proto().node}
    assert not types & {"Slice", "Range", "Expand"}  # 13-30 TensorRT parser layers each
