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

import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as op

from .. import _defaults
from ..errors import TokcompileError
from ._lowering import plugin_attributes

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
# Equal/Greater/Less/Where, CumSum, Range, Slice, Concat, Reshape. No ScatterElements with a
# reduction, no TopK/ArgMax (their tie order is not portable): the merge is a one-hot assignment
# matrix M [B, N-r, N] (M[o, n] = dest[n] == o) applied with MatMul.


def onnx_function(opset_version: int) -> onnxscript.values.OnnxFunction:
    """The function body for the node, with ``default_opset`` equal to the model's opset."""
    if opset_version != 18:
        raise TokcompileError(f"TomeMerge's ONNX body is written for opset 18, not {opset_version}")

    @onnxscript.script(onnxscript.values.Opset(ONNX_DOMAIN, 1), default_opset=op)
    def TomeMerge(x, metric: FLOAT, size: FLOAT, r: int, num_prefix: int):
        zero = op.Constant(value_ints=[0])
        one = op.Constant(value_ints=[1])
        two = op.Constant(value_ints=[2])
        axis_last = op.Constant(value_ints=[-1])
        zero_s = op.Constant(value_int=0)
        one_s = op.Constant(value_int=1)
        two_s = op.Constant(value_int=2)
        one_f = op.Constant(value_float=1.0)
        neg_inf = op.Constant(value_float=float("-inf"))
        end = op.Constant(value_ints=[9223372036854775807])

        # Static sizes (scalars, int64): N, NA = ceil(N/2), NB = floor(N/2), r' and the prefix split.
        x_shape = op.Shape(x)
        batch = op.Slice(x_shape, zero, one)
        n = op.Squeeze(op.Slice(x_shape, one, two), zero)
        na = op.Div(op.Add(n, one_s), two_s)
        nb = op.Div(n, two_s)
        p = op.Constant(value_int=num_prefix)
        pa = op.Div(op.Add(p, one_s), two_s)
        pb = op.Div(p, two_s)
        r_eff = op.Max(op.Min(op.Constant(value_int=r), op.Div(op.Sub(n, p), two_s)), zero_s)
        r_f = op.Cast(r_eff, to=1)

        # Cosine similarity between A (even) and B (odd) tokens, prefix rows/columns at -inf.
        m = op.Div(metric, op.ReduceL2(metric, axis_last, keepdims=1))
        m_a = op.Slice(m, zero, end, one, two)  # [B, NA, hd]
        m_b = op.Slice(m, one, end, one, two)  # [B, NB, hd]
        scores = op.MatMul(m_a, op.Transpose(m_b, perm=[0, 2, 1]))  # [B, NA, NB]
        a_idx = op.Cast(op.Range(zero_s, na, one_s), to=1)  # [NA] float
        b_idx = op.Cast(op.Range(zero_s, nb, one_s), to=1)  # [NB] float
        prefix_row = op.Less(op.Unsqueeze(a_idx, axis_last), op.Cast(pa, to=1))  # [NA, 1]
        prefix_col = op.Less(b_idx, op.Cast(pb, to=1))  # [NB]
        scores = op.Where(op.Or(prefix_row, prefix_col), neg_inf, scores)

        # Best B partner per A token; the first index on ties, computed without ArgMax.
        node_max = op.ReduceMax(scores, axis_last, keepdims=1)  # [B, NA, 1]
        big = op.Cast(nb, to=1)
        node_idx = op.ReduceMin(op.Where(op.Equal(scores, node_max), b_idx, big), axis_last, keepdims=0)

        # Stable descending rank: rank[a] = #{a': nm[a'] > nm[a]} + #{a' < a: nm[a'] = nm[a]}.
        row = node_max  # [B, NA, 1]: nm[a]
        col = op.Transpose(node_max, perm=[0, 2, 1])  # [B, 1, NA]: nm[a']
        earlier = op.Less(op.Unsqueeze(a_idx, zero), op.Unsqueeze(a_idx, axis_last))  # [NA, NA]: a' < a
        before = op.Or(op.Greater(col, row), op.And(op.Equal(col, row), earlier))
        rank = op.ReduceSum(op.Cast(before, to=1), axis_last, keepdims=0)  # [B, NA] float
        is_src = op.Less(rank, r_f)

        # Output positions (float holds these small integers exactly; cast to int64 at the end).
        pb_f = op.Cast(pb, to=1)
        b_base = op.Sub(op.Add(op.Cast(na, to=1), pb_f), r_f)
        unm_sorted = op.Sub(op.Add(pb_f, op.CumSum(op.Cast(op.Not(is_src), to=1), one_s)), one_f)
        unm_ranked = op.Sub(rank, r_f)
        has_prefix = op.Greater(p, zero_s)
        dest_a = op.Where(is_src, op.Sub(op.Add(b_base, node_idx), pb_f), op.Where(has_prefix, unm_sorted, unm_ranked))
        dest_b = op.Sub(op.Add(b_base, b_idx), pb_f)  # [NB]
        dest_b = op.Expand(op.Unsqueeze(dest_b, zero), op.Concat(batch, op.Reshape(nb, one), axis=0))
        # Interleave A (even) and B (odd): pad B to NA, stack on a last axis, flatten, cut to N.
        dest_b = op.Concat(dest_b, op.Slice(dest_a, op.Reshape(nb, one), end, one), axis=1)  # [B, NA]
        pairs = op.Concat(op.Unsqueeze(dest_a, axis_last), op.Unsqueeze(dest_b, axis_last), axis=2)
        dest = op.Slice(op.Reshape(pairs, op.Concat(batch, axis_last, axis=0)), zero, op.Reshape(n, one), one)
        # Prefix tokens stay where they are; r' = 0 is the identity.
        positions = op.Cast(op.Range(zero_s, n, one_s), to=1)  # [N]
        keep_place = op.Or(op.Less(positions, op.Cast(p, to=1)), op.Equal(r_eff, zero_s))
        dest = op.Where(keep_place, positions, dest)  # [B, N] float

        # Merge: M[b, o, n] = dest[b, n] == o; size_out = M·size; x_out = (M ⊙ sizeᵀ / size_out)·x.
        outputs = op.Cast(op.Range(zero_s, op.Sub(n, r_eff), one_s), to=1)
        assign = op.Cast(op.Equal(op.Unsqueeze(dest, one), op.Unsqueeze(outputs, axis_last)), to=1)  # [B, N-r, N]
        size_out = op.MatMul(assign, size)  # [B, N-r, 1]
        weight = op.Div(op.Mul(assign, op.Transpose(size, perm=[0, 2, 1])), size_out)
        x_out = op.MatMul(op.CastLike(weight, x), x)
        return x_out, size_out, op.Cast(dest, to=7)

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
