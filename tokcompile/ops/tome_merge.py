"""``tokcompile::tome_merge``: ToMe bipartite soft matching + size-weighted merge.

Semantics: methods-reference.md §2.2 (official ``facebookresearch/ToMe``), re-written here from
that spec. Tensor contract::

    x:      [B, N, C]   post-attention-residual tokens; the first P are prefix tokens
    metric: [B, N, hd]  keys averaged over heads (the block's SDPA k input, k.mean(dim=1))
    size:   [B, N, 1]   float32 token sizes (ones before the first merge)
    r:      merges requested; the op uses r' = min(r, (N - P) // 2), never below 0
    returns (x_out [B, N - r', C], size_out [B, N - r', 1] float32, dest [B, N] int64)

``dest[b, n]`` is the output position of input token n: a token that merges points at the
token it merged into. Everything the op does follows from ``dest``::

    size_out[o] = Σ_{dest[n] = o} size[n]
    x_out[o]    = Σ_{dest[n] = o} (size[n] / size_out[o]) · x[n]

which is ToMe's ``merge(x · size) / merge(size)`` written as a weighted mean, so fp16 tokens are
never multiplied by sizes of tens (no overflow) and r' = 0 returns x exactly.

Matching, in float32 whatever x's dtype (``m = metric / ‖metric‖₂``):

* A = even positions (CLS is A[0]), B = odd positions; S = m_A · m_Bᵀ (cosine similarity).
* Prefix tokens never merge: A rows and B columns holding a prefix token are -inf (this is
  ToMe's ``S[:, 0, :] = -inf`` for CLS and ``S[:, :, 0] = -inf`` for a distillation token,
  generalised to any P, e.g. register tokens).
* ``node_max, node_idx = max over B`` (first index on ties); A tokens are ranked by node_max,
  descending, with a **stable** order: equal node_max values keep their A order. The official
  ``argsort`` is unstable, so ties (identical patches) may resolve differently on CPU and GPU
  there; here every backend gives the same ranking (the ONNX body ranks by pairwise counting,
  not by a TopK whose tie order TensorRT does not promise).
* The r' best-ranked A tokens merge into their ``node_idx`` partner in B.

Output order (the next block's even/odd split depends on it, §2.2)::

    [prefix tokens in original order, unmerged non-prefix A tokens, non-prefix B tokens in order]

With P ≥ 1 the unmerged A tokens keep their original relative order (official: ``unm`` sorted
when a class token exists; with CLS + distillation token this is its ``[cls, dist, unm, dst]``);
with P = 0 they are in ranking order, as the official code leaves them without a class token.
When r' = 0 the op is the identity (dest = 0..N-1), as the official ``do_nothing`` is.
"""

from __future__ import annotations

import typing

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as op

from .. import _defaults
from ..errors import TokcompileError
from .lowering import plugin_attributes

ONNX_DOMAIN = _defaults.ONNX_DOMAIN
ONNX_NAME = "TomeMerge"
PLUGIN = False  # no TensorRT plugin: the node never carries plugin attributes
NATIVE = True  # r' follows from shapes: the body lowers to TensorRT layers


def merge_count(r: int, num_tokens: int, num_prefix: int) -> int:
    """r' = min(r, (N - P) // 2) in Python integers (ToMe ``merge.py``), at least 0."""
    if not isinstance(num_tokens, int):
        raise TokcompileError("tome_merge needs a static token count; export with a fixed image size")
    return max(0, min(int(r), (num_tokens - num_prefix) // 2))


def merge_destinations(metric: torch.Tensor, r: int, num_prefix: int) -> torch.Tensor:
    """metric [B, N, hd] → dest [B, N] int64 for r' = merge_count(r, N, P) (see module docstring)."""
    B, N, _ = metric.shape
    P = num_prefix
    r = merge_count(r, N, P)
    positions = torch.arange(N, device=metric.device).expand(B, N)
    if r == 0:
        return positions.contiguous()
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True)
    scores = m[:, 0::2] @ m[:, 1::2].transpose(1, 2)  # [B, NA, NB]
    NA, NB = scores.shape[1], scores.shape[2]
    pa, pb = (P + 1) // 2, P // 2  # prefix tokens among A (even) and B (odd) positions
    scores[:, :pa, :] = -torch.inf
    scores[:, :, :pb] = -torch.inf
    node_max, node_idx = scores.max(dim=-1)  # first index on ties
    order = torch.sort(node_max, dim=1, descending=True, stable=True).indices
    a_range = torch.arange(NA, device=metric.device).expand(B, NA)
    rank = torch.empty_like(order).scatter_(1, order, a_range)
    is_src = rank < r
    b_base = NA + pb - r  # output position of B token pb (the first non-prefix B token)
    if P > 0:
        unmerged = pb + (~is_src).long().cumsum(dim=1) - 1
    else:
        unmerged = rank - r
    dest = torch.empty(B, N, dtype=torch.int64, device=metric.device)
    dest[:, 0::2] = torch.where(is_src, b_base + node_idx - pb, unmerged)
    dest[:, 1::2] = b_base + torch.arange(NB, device=metric.device) - pb
    dest[:, :P] = positions[:, :P]
    return dest


def tome_merge_reference(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch reference; see the module docstring for the contract."""
    B, N, C = x.shape
    n_out = N - merge_count(r, N, num_prefix)
    dest = merge_destinations(metric, r, num_prefix)
    if n_out == N:
        return x.clone(), size.float().clone(), dest
    index = dest.unsqueeze(-1)
    size = size.float()
    size_out = size.new_zeros(B, n_out, 1).scatter_add_(1, index, size)
    weight = size / size_out.gather(1, index)  # each token's share of its group
    x_out = x.new_zeros(B, n_out, C, dtype=torch.float32).scatter_add_(1, index.expand(B, N, C), x.float() * weight)
    return x_out.to(x.dtype), size_out, dest


@torch.library.custom_op("tokcompile::tome_merge", mutates_args=())
def _tome_merge_op(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tome_merge_reference(x, metric, size, r, num_prefix)


@_tome_merge_op.register_fake
def _tome_merge_fake(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, C = x.shape
    n_out = N - merge_count(r, N, num_prefix)
    return (
        x.new_empty(B, n_out, C),
        x.new_empty(B, n_out, 1, dtype=torch.float32),
        x.new_empty(B, N, dtype=torch.int64),
    )


tome_merge = torch.ops.tokcompile.tome_merge.default


# ---------------------------------------------------------------------------------------------
# ONNX: one node TomeMerge(x, metric, size) in domain "tokcompile" calling a model-local function
# whose body is plain ONNX that the TensorRT parser handles natively: MatMul, ReduceMax/Min/Sum,
# Equal/Greater/Less/Where, CumSum, ConstantOfShape, Transpose. No ScatterElements with a
# reduction, no TopK/ArgMax (their tie order is not portable): the merge is a one-hot assignment
# matrix M [B, N-r, N] (M[o, n] = dest[n] == o) applied with MatMul. Written for the TensorRT
# parser, which turns every Slice/Range/Expand into 15-30 int64 shape layers: the even (A) / odd
# (B) split is a mask over all N x N similarities instead of two strided slices, positions are a
# CumSum, and only the output length N - r' is shape arithmetic.


def _rank3(value: float) -> onnx.TensorProto:
    return onnx.helper.make_tensor("value", onnx.TensorProto.FLOAT, [1, 1, 1], [value])


_ZERO, _HALF, _ONE, _NEG_INF = (_rank3(v) for v in (0.0, 0.5, 1.0, float("-inf")))


def onnx_function(opset_version: int) -> onnxscript.values.OnnxFunction:
    """The function body for the node, with ``default_opset`` equal to the model's opset."""
    if opset_version != 18:
        raise TokcompileError(f"TomeMerge's ONNX body is written for opset 18, not {opset_version}")

    @typing.no_type_check  # onnxscript's DSL: op signatures mypy cannot type (traced, not run)
    @onnxscript.script(onnxscript.values.Opset(ONNX_DOMAIN, 1), default_opset=op)
    def TomeMerge(x, metric: FLOAT, size: FLOAT, r: int, num_prefix: int):
        axis_last = op.Constant(value_ints=[-1])
        tokens = op.Constant(value_int=1)
        zero_s = op.Constant(value_int=0)
        two_s = op.Constant(value_int=2)
        # Float constants have the operands' rank 3: TensorRT's parser adds a broadcast layer to
        # every elementwise op whose operands differ in rank.
        rank3 = op.Constant(value_ints=[1, 1, 1])
        zero_f = op.Constant(value=_ZERO)
        half_f = op.Constant(value=_HALF)
        one_f = op.Constant(value=_ONE)
        neg_inf = op.Constant(value=_NEG_INF)
        p_s = op.Constant(value_int=num_prefix)
        prefix = op.Reshape(op.Cast(p_s, to=1), rank3)

        # N and r' = min(r, (N - P) // 2) (>= 0) as shape values: r' sets the output length.
        n_s = op.Shape(x, start=1, end=2)  # [1]
        r_s = op.Max(op.Min(op.Constant(value_int=r), op.Div(op.Sub(n_s, p_s), two_s)), zero_s)
        r_f = op.Reshape(op.Cast(r_s, to=1), rank3)
        n_f = op.Reshape(op.Cast(n_s, to=1), rank3)

        # Positions p = 0..N-1 ([B, N, 1], float holds them exactly; sizes are >= 1, so size/size = 1).
        p = op.Sub(op.CumSum(op.Div(size, size), tokens), one_f)
        p_t = op.Transpose(p, perm=[0, 2, 1])  # [B, 1, N]
        half = op.Floor(op.Mul(p, half_f))  # A index of an even p, B index of an odd p
        is_a = op.Equal(p, op.Add(half, half))  # even positions: set A (CLS is A[0])
        movable = op.GreaterOrEqual(p, prefix)  # prefix tokens never merge
        rows = op.And(is_a, movable)  # [B, N, 1]
        cols = op.Transpose(op.And(op.Not(is_a), movable), perm=[0, 2, 1])  # [B, 1, N]

        # Cosine similarity of every (movable A, movable B) pair; best B partner per A token (first
        # position on ties, without ArgMax). Rows that are not movable A tokens are all -inf.
        m = op.Div(metric, op.ReduceL2(metric, axis_last, keepdims=1))
        scores = op.Where(op.And(rows, cols), op.MatMul(m, op.Transpose(m, perm=[0, 2, 1])), neg_inf)  # [B, N, N]
        node_max = op.ReduceMax(scores, axis_last, keepdims=1)  # [B, N, 1]
        partner = op.ReduceMin(op.Where(op.Equal(scores, node_max), p_t, n_f), axis_last, keepdims=1)

        # Stable descending rank among A tokens: rank[a] = #{a': nm[a'] > nm[a]} + #{a' < a: nm[a'] = nm[a]}.
        col = op.Transpose(node_max, perm=[0, 2, 1])  # [B, 1, N]: nm[a']
        earlier = op.And(op.Transpose(is_a, perm=[0, 2, 1]), op.Less(p_t, p))  # a' is A and a' < a
        before = op.Or(
            op.And(op.Greater(col, node_max), op.Transpose(is_a, perm=[0, 2, 1])),
            op.And(op.Equal(col, node_max), earlier),
        )
        rank = op.ReduceSum(op.Cast(before, to=1), axis_last, keepdims=1)  # [B, N, 1]
        is_src = op.And(is_a, op.Less(rank, r_f))

        # Output positions: [prefix, unmerged A (original order if P > 0, else rank order), B].
        pb = op.Floor(op.Mul(prefix, half_f))
        b_base = op.Sub(op.Add(op.Sub(n_f, op.Floor(op.Mul(n_f, half_f))), pb), r_f)  # NA + pb - r'
        unm_sorted = op.Sub(op.Add(pb, op.CumSum(op.Cast(op.And(is_a, op.Not(is_src)), to=1), tokens)), one_f)
        unmerged = op.Where(op.Greater(prefix, zero_f), unm_sorted, op.Sub(rank, r_f))
        src_dest = op.Sub(op.Add(b_base, op.Floor(op.Mul(partner, half_f))), pb)  # partner's B index
        dest = op.Where(is_a, op.Where(is_src, src_dest, unmerged), op.Sub(op.Add(b_base, half), pb))
        dest = op.Where(op.Or(op.Not(movable), op.Equal(r_f, zero_f)), p, dest)  # [B, N, 1] float

        # Merge: M[b, o, n] = dest[b, n] == o; size_out = M·size; x_out = (M ⊙ sizeᵀ / size_out)·x.
        outputs = op.CumSum(op.ConstantOfShape(op.Sub(n_s, r_s), value=[1.0]), zero_s)  # [N - r']: 1..N-r'
        out_pos = op.Unsqueeze(op.Sub(outputs, op.Constant(value_float=1.0)), axis_last)  # [N - r', 1]
        assign = op.Cast(op.Equal(op.Transpose(dest, perm=[0, 2, 1]), out_pos), to=1)  # [B, N-r, N]
        size_out = op.MatMul(assign, size)  # [B, N-r, 1]
        weight = op.Div(op.Mul(assign, op.Transpose(size, perm=[0, 2, 1])), size_out)
        x_out = op.MatMul(op.CastLike(weight, x), x)
        return x_out, size_out, op.Cast(op.Squeeze(dest, axis_last), to=7)

    return TomeMerge


def onnx_symbolic(
    x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: int, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Export form: emits the ``tokcompile::TomeMerge`` node (traced by torch.onnx.export)."""
    B, N, C = x.shape
    r = merge_count(r, N, num_prefix)
    if r == 0:  # identity layer (official do_nothing): no node at all
        dest = torch.arange(N, device=x.device).expand(B, N)
        return x, size.float(), dest
    x_out, size_out, dest = torch.onnx.ops.symbolic_multi_out(
        f"{ONNX_DOMAIN}::{ONNX_NAME}",
        [x, metric.float(), size.float()],
        {
            "r": r,
            "num_prefix": num_prefix,
            **plugin_attributes(PLUGIN, NATIVE),
        },
        dtypes=[x.dtype, torch.float32, torch.int64],
        shapes=[[B, N - r, C], [B, N - r, 1], [B, N]],
        version=1,
    )
    return x_out, size_out, dest
