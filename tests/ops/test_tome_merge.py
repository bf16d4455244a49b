"""tokcompile::tome_merge against the ToMe semantics (methods-reference.md §2.2).

``spec_merge`` below is written from the §2.2 pseudocode the way the official ``merge.py``
computes it: split into A (even) / B (odd), argsort of node_max, gather of the unmerged and
source A tokens, ``scatter_reduce(sum)`` into B, concatenation (with the distillation-token
reordering), then ``merge(x·size) / merge(size)``. The only change is a stable argsort, as
tokcompile documents. It shares no code with ``tokcompile.ops.tome_merge`` (which computes an
output position per token and a weighted mean). The ONNX function body is run in ONNX Runtime
on a one-node model, against the same reference.
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
from tokcompile.ops import TOKEN_OPS
from tokcompile.ops.tome_merge import ONNX_NAME, merge_count, onnx_function, tome_merge, tome_merge_reference

FP32_ATOL = 1e-6


def spec_merge(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, class_token: bool, distill_token: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """§2.2 with a stable argsort → (x [B, N-r, C], size [B, N-r, 1], output position of each input token [B, N])."""
    B, N, C = x.shape
    protected = int(class_token) + int(distill_token)
    r = min(r, (N - protected) // 2)
    if r <= 0:  # do_nothing: merge_wavg still runs, x·size / size
        return x * size / size, size, torch.arange(N).expand(B, N)
    m = metric / metric.norm(dim=-1, keepdim=True)
    a, b = m[:, ::2], m[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[:, 0, :] = -math.inf
    if distill_token:
        scores[:, :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1)[0]

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[:, ::2], t[:, 1::2]
        n, t1, c = src.shape
        unm = src.gather(dim=1, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=1, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(n, r, c), src, reduce="sum")
        if distill_token:
            return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
        return torch.cat([unm, dst], dim=1)

    x_out = merge(x * size)
    size_out = merge(size)
    # Where did each token go: merge a one-hot of the token index, read the row it landed in.
    onehot = torch.eye(N).expand(B, N, N)
    dest = merge(onehot).argmax(dim=1)
    return x_out / size_out, size_out, dest


def random_inputs(B: int, N: int, C: int, hd: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=gen)
    metric = torch.randn(B, N, hd, generator=gen)
    size = torch.randint(1, 5, (B, N, 1), generator=gen).float()  # sizes after earlier merges
    return x, metric, size


CASES = [
    # (N, P, r): P = 1 CLS, 2 CLS + distillation token, 0 no prefix
    (197, 1, 13),
    (184, 1, 13),  # even N: A and B the same size
    (101, 1, 50),  # r = (N - P) // 2 exactly: every non-prefix A token merges
    (101, 1, 80),  # capped to 50
    (198, 2, 16),
    (51, 2, 25),  # capped to 24
    (50, 0, 10),
    (49, 0, 24),
    (30, 1, 0),  # r = 0: identity
    (30, 2, 0),
]


@pytest.mark.parametrize(("N", "P", "r"), CASES)
def test_op_matches_reference_and_spec(N: int, P: int, r: int) -> None:
    x, metric, size = random_inputs(3, N, 24, 16, seed=N + 7 * P + r)
    out, size_out, dest = tome_merge(x, metric, size, r, P)
    ref_out, ref_size, ref_dest = tome_merge_reference(x, metric, size, r, P)
    spec_out, spec_size, spec_dest = spec_merge(x, metric, size, r, P >= 1, P == 2)

    r_eff = min(r, (N - P) // 2)
    assert merge_count(r, N, P) == r_eff
    assert out.shape == (3, N - r_eff, 24) and size_out.shape == (3, N - r_eff, 1) and dest.shape == (3, N)
    assert dest.dtype == torch.int64 and size_out.dtype == torch.float32
    assert torch.equal(dest, ref_dest) and torch.equal(dest, spec_dest)
    assert torch.equal(size_out, ref_size) and torch.equal(size_out, spec_size)
    torch.testing.assert_close(out, ref_out, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(out, spec_out, atol=FP32_ATOL, rtol=0)
    # Every output position receives at least one token; prefix tokens stay first, unmerged.
    for row in dest:
        assert sorted(set(row.tolist())) == list(range(N - r_eff))
        assert row[:P].tolist() == list(range(P))
        assert all((row == p).sum() == 1 for p in range(P))
    assert torch.equal(out[:, :P], x[:, :P])
    if r_eff == 0:
        assert torch.equal(out, x) and torch.equal(dest, torch.arange(N).expand(3, N))


def test_unmerged_a_tokens_keep_order_then_b_tokens() -> None:
    """Output order: [prefix, unmerged A in original order, all B in original order] (§2.2)."""
    N, P, r = 41, 1, 7
    x, metric, size = random_inputs(2, N, 8, 8, seed=3)
    _, _, dest = tome_merge(x, metric, size, r, P)
    na = (N + 1) // 2
    for row in dest.tolist():
        b_dest = row[1::2]
        assert b_dest == list(range(na - r, N - r))  # B tokens last, in order
        a_dest = row[0::2]
        unmerged = [d for d in a_dest if d < na - r]
        assert unmerged == sorted(unmerged) == list(range(na - r))
        assert sum(d >= na - r for d in a_dest) == r  # exactly r A tokens merged into B


def test_ties_resolve_stably() -> None:
    """Identical tokens: every node_max ties, so the first r non-CLS A tokens merge into B[0]."""
    N, P, r = 21, 1, 4
    x = torch.randn(2, N, 8)
    metric = torch.ones(2, N, 4)  # all cosine similarities equal 1
    size = torch.ones(2, N, 1)
    first = tome_merge(x, metric, size, r, P)
    again = tome_merge(x, metric, size, r, P)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    na = (N + 1) // 2
    expected = []
    for n in range(N):
        if n % 2:  # B token j = n // 2
            expected.append(na - r + n // 2)
        elif 1 <= n // 2 <= r:  # A tokens 1..r rank first and pick B[0] (first index on ties)
            expected.append(na - r)
        else:
            expected.append(n // 2 if n // 2 == 0 else n // 2 - r)
    assert first[2][0].tolist() == expected
    assert torch.equal(first[2], spec_merge(x, metric, size, r, True, False)[2])
    # B[0] holds itself and r sources: size r + 1 and their mean.
    assert first[1][0, na - r, 0].item() == r + 1
    members = [1] + [2 * i for i in range(1, r + 1)]
    torch.testing.assert_close(first[0][0, na - r], x[0, members].mean(dim=0), atol=FP32_ATOL, rtol=0)


def test_size_weighted_mean() -> None:
    """A token of size 3 merged into one of size 1 weighs 3:1 (merge(x·size) / merge(size))."""
    x = torch.tensor([[[0.0], [10.0], [20.0], [30.0], [40.0]]])
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.0], [0.0, 1.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0], [1.0]]])
    # A = {0 (CLS), 2, 4}, B = {1, 3}: token 2 is closest to 3, token 4 to 1 (cos 1): 4 merges.
    out, size_out, dest = tome_merge(x, metric, size, 1, 1)
    assert dest.tolist() == [[0, 2, 1, 3, 2]]
    assert size_out[0, :, 0].tolist() == [1.0, 3.0, 2.0, 1.0]
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 20.0, 25.0, 30.0]))


def test_merge_count_is_python_integer_arithmetic() -> None:
    assert merge_count(13, 197, 1) == 13
    assert merge_count(16, 21, 1) == 10  # §2.1: the last DeiT layer at r=16
    assert merge_count(200, 198, 2) == 98
    assert merge_count(0, 197, 1) == 0 and merge_count(5, 2, 1) == 0
    with pytest.raises(TokcompileError, match="static token count"):
        merge_count(13, 197.0, 1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fake kernel, opcheck


@pytest.mark.parametrize(("N", "P", "r", "out_tokens"), [(197, 1, 13, 184), (21, 1, 16, 11), (30, 2, 0, 30)])
def test_fake_kernel_shapes(N: int, P: int, r: int, out_tokens: int) -> None:
    with FakeTensorMode():
        x = torch.empty(4, N, 24, dtype=torch.float16)
        metric = torch.empty(4, N, 8)
        size = torch.empty(4, N, 1)
        out, size_out, dest = tome_merge(x, metric, size, r, P)
    assert tuple(out.shape) == (4, out_tokens, 24) and out.dtype == torch.float16
    assert tuple(size_out.shape) == (4, out_tokens, 1) and size_out.dtype == torch.float32
    assert tuple(dest.shape) == (4, N) and dest.dtype == torch.int64


@pytest.mark.parametrize(("P", "r"), [(1, 5), (2, 3), (0, 0)])
def test_opcheck(P: int, r: int) -> None:
    """torch.library consistency checks; static shapes only (r' depends on the token count)."""
    x, metric, size = random_inputs(2, 30, 8, 4, seed=3)
    torch.library.opcheck(
        torch.ops.tokcompile.tome_merge.default,
        (x, metric, size, r, P),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static"),
    )


# ----------------------------------------------------------------------------- precision


def test_fp16_tokens_match_in_fp32() -> None:
    """fp16 tokens with an fp32 metric merge the same tokens; the mean is taken in float32."""
    x, metric, size = random_inputs(3, 101, 32, 16, seed=11)
    out16, size16, dest16 = tome_merge(x.half(), metric, size, 20, 1)
    out32, size32, dest32 = tome_merge(x.half().float(), metric, size, 20, 1)
    assert out16.dtype == torch.float16 and size16.dtype == torch.float32
    assert torch.equal(dest16, dest32) and torch.equal(size16, size32)
    assert torch.equal(out16, out32.half())


def test_fp16_metric_is_scored_in_fp32() -> None:
    x, metric, size = random_inputs(3, 101, 32, 16, seed=12)
    a = tome_merge(x, metric.half(), size, 20, 1)
    b = tome_merge(x, metric.half().float(), size, 20, 1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# ----------------------------------------------------------------------------- ONNX function body


def _run_body(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, P: int) -> list[np.ndarray]:
    """One TomeMerge node calling its function body, run by ONNX Runtime (batch symbolic)."""
    B, N, C = x.shape
    node = helper.make_node(ONNX_NAME, ["x", "metric", "size"], ["out", "size_out", "dest"], domain="tokcompile")
    node.attribute.extend([helper.make_attribute("r", r), helper.make_attribute("num_prefix", P)])
    return run_function_body(
        onnx_function,
        node,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", N, C]),
            helper.make_tensor_value_info("metric", TensorProto.FLOAT, ["B", N, metric.shape[2]]),
            helper.make_tensor_value_info("size", TensorProto.FLOAT, ["B", N, 1]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "M", C]),
            helper.make_tensor_value_info("size_out", TensorProto.FLOAT, ["B", "M", 1]),
            helper.make_tensor_value_info("dest", TensorProto.INT64, ["B", N]),
        ],
        {"x": x.numpy(), "metric": metric.numpy(), "size": size.numpy()},
    )


@pytest.mark.parametrize(
    ("N", "P", "r"), [(197, 1, 13), (198, 2, 16), (101, 1, 80), (50, 0, 10), (51, 3, 7), (30, 1, 0)]
)
def test_onnx_body_matches_reference(N: int, P: int, r: int) -> None:
    x, metric, size = random_inputs(3, N, 24, 16, seed=N + P)
    out, size_out, dest = _run_body(x, metric, size, r, P)
    ref_out, ref_size, ref_dest = tome_merge_reference(x, metric, size, r, P)
    np.testing.assert_array_equal(dest, ref_dest.numpy())
    np.testing.assert_array_equal(size_out, ref_size.numpy())
    np.testing.assert_allclose(out, ref_out.numpy(), atol=1e-5, rtol=0)


def test_onnx_body_breaks_ties_like_the_reference() -> None:
    x = torch.randn(2, 21, 8)
    metric = torch.ones(2, 21, 4)
    metric[1, ::3] = -1.0  # a second pattern of ties
    size = torch.ones(2, 21, 1)
    _, _, dest = _run_body(x, metric, size, 4, 1)
    np.testing.assert_array_equal(dest, tome_merge(x, metric, size, 4, 1)[2].numpy())


def test_onnx_body_uses_plain_onnx_only() -> None:
    """TensorRT parses the body natively: no ScatterElements with a reduction, no TopK/ArgMax."""
    fn = onnx_function(18).to_function_proto()
    assert fn.name == ONNX_NAME and fn.domain == "tokcompile"
    assert list(fn.input) == ["x", "metric", "size"] and len(fn.output) == 3
    assert set(fn.attribute) | {a.name for a in fn.attribute_proto} >= {"r", "num_prefix"}
    types = {n.op_type for n in fn.node}
    assert all(n.domain in ("", "ai.onnx") for n in fn.node)
    assert {"MatMul", "Equal", "CumSum", "ConstantOfShape"} <= types
    assert not types & {"ScatterElements", "ScatterND", "TopK", "ArgMax", "ArgMin"}
    # each of these costs TensorRT's parser 13-30 int64 shape layers (benchmarks/trt_layers.py)
    assert not types & {"Slice", "Range", "Expand", "Split"}
    assert tome_merge in TOKEN_OPS and TOKEN_OPS[tome_merge].onnx_name == ONNX_NAME
    with pytest.raises(TokcompileError, match="opset 18"):
        onnx_function(17)
