"""``tokcompile::evit_select``: EViT top-k token selection with optional fused token.

Semantics: methods-reference.md §1.2 (official ``youweiliang/evit``), re-written here:

    x:      [B, N, C]  post-attention-residual tokens; the first P are prefix tokens (CLS, ...)
    attn:   [B, H, N]  float32 CLS row of the post-softmax attention, per head
    k     = ceil(keep_rate * (N - P)) in float64
    s     = mean_h attn[:, h, P:]                        [B, N - P]
    idx   = topk(s, k, largest, sorted)                   descending score order
    out   = [x[:, :P], x[:, P:][idx], (Σ_{j ∉ idx} s_j · x[:, P + j])?]
            the fused token uses the raw (un-normalised) weights, as the official code does.
    returns (out [B, P + k + fuse, C], idx + P [B, k] int64: kept positions in x)

When k == N - P the op is the identity (the official layer returns early), with no fused token.
Scoring and the fused sum run in float32 whatever the token dtype.
"""

from __future__ import annotations

import math
import typing

import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as op

from .. import _defaults
from ..errors import TokcompileError
from .lowering import plugin_attributes

ONNX_DOMAIN = _defaults.ONNX_DOMAIN
ONNX_NAME = "EvitSelect"
PLUGIN = True  # plugins/evitSelectPlugin (IPluginV3 EvitSelect)
NATIVE = True  # k follows from shapes: the body lowers to TensorRT layers (--plugins auto uses it)


def keep_count(keep_rate: float, num_tokens: int, num_prefix: int) -> int:
    """k = ceil(keep_rate * (N - P)) in float64, as Python's math.ceil does (never float32)."""
    if not isinstance(num_tokens, int):
        raise TokcompileError("evit_select needs a static token count; export with a fixed image size")
    return int(math.ceil(float(keep_rate) * float(num_tokens - num_prefix)))


def evit_select_reference(
    x: torch.Tensor, attn: torch.Tensor, keep_rate: float, fuse: bool, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference; see the module docstring for the contract."""
    B, N, C = x.shape
    P = num_prefix
    k = keep_count(keep_rate, N, P)
    if k >= N - P:
        idx = torch.arange(P, N, device=x.device).expand(B, N - P).contiguous()
        return x.clone(), idx
    scores = attn.float().mean(dim=1)[:, P:]
    _, idx = scores.topk(k, dim=1, largest=True, sorted=True)
    rest = x[:, P:]
    kept = rest.gather(1, idx.unsqueeze(-1).expand(B, k, C))
    parts = [x[:, :P], kept]
    if fuse:
        dropped_weights = scores.scatter(1, idx, 0.0)
        extra = torch.bmm(dropped_weights.unsqueeze(1), rest.float()).to(x.dtype)
        parts.append(extra)
    return torch.cat(parts, dim=1), idx + P


@torch.library.custom_op("tokcompile::evit_select", mutates_args=())
def _evit_select_op(
    x: torch.Tensor, attn: torch.Tensor, keep_rate: float, fuse: bool, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return evit_select_reference(x, attn, keep_rate, fuse, num_prefix)


@_evit_select_op.register_fake
def _evit_select_fake(
    x: torch.Tensor, attn: torch.Tensor, keep_rate: float, fuse: bool, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    B, N, C = x.shape
    k = keep_count(keep_rate, N, num_prefix)
    if k >= N - num_prefix:
        return x.new_empty(B, N, C), x.new_empty(B, N - num_prefix, dtype=torch.int64)
    return x.new_empty(B, num_prefix + k + int(fuse), C), x.new_empty(B, k, dtype=torch.int64)


evit_select = torch.ops.tokcompile.evit_select.default


# ---------------------------------------------------------------------------------------------
# ONNX: one node EvitSelect(x, attn) in domain "tokcompile" calling a model-local function whose
# body is plain ONNX (TopK, GatherND, ScatterElements without reduction, MatMul, Concat). It is
# written for the TensorRT parser, which turns every Slice/Range/Expand into 15-30 int64 shape
# layers: positions come from a CumSum of ones, the prefix is masked rather than sliced off, and
# the kept tokens are gathered with GatherND (batch_dims=1) rather than an expanded index, and the
# prefix / fused rows with Gathers of attribute-length index vectors. The TensorRT ONNX parser
# inlines the body unless the node carries the plugin attributes (--plugins on, ops/lowering.py)
# and a plugin EvitSelect is registered in that namespace.


def onnx_function(opset_version: int) -> onnxscript.values.OnnxFunction:
    """The function body for the node, with ``default_opset`` equal to the model's opset."""
    if opset_version != 18:
        raise TokcompileError(f"EvitSelect's ONNX body is written for opset 18, not {opset_version}")

    @typing.no_type_check  # onnxscript's DSL: op signatures mypy cannot type (traced, not run)
    @onnxscript.script(onnxscript.values.Opset(ONNX_DOMAIN, 1), default_opset=op)
    def EvitSelect(x, attn: FLOAT, k: int, num_prefix: int, fuse: int):
        axis1 = op.Constant(value_ints=[1])
        zero = op.Constant(value_ints=[0])
        zero_s = op.Constant(value_int=0)
        one_s = op.Constant(value_int=1)
        zero_f = op.Constant(value_float=0.0)
        one_f = op.Constant(value_float=1.0)
        neg_inf = op.Constant(value_float=float("-inf"))
        prefix = op.Constant(value_int=num_prefix)
        prefix_1d = op.Unsqueeze(prefix, zero)
        scores = op.ReduceMean(attn, axis1, keepdims=0)  # [B, N]
        place = op.CumSum(op.Add(op.Mul(scores, zero_f), one_f), op.Constant(value_int=1))  # [B, N]: 1..N
        is_prefix = op.LessOrEqual(place, op.Cast(prefix, to=1))
        top_values, idx = op.TopK(
            op.Where(is_prefix, neg_inf, scores), op.Unsqueeze(op.Constant(value_int=k), zero), axis=1
        )
        kept = op.GatherND(x, op.Unsqueeze(idx, op.Constant(value_ints=[-1])), batch_dims=1)  # [B, k, C]
        # Dropped tokens keep their raw attention weight; kept and prefix tokens get 0.
        rest = op.Where(is_prefix, zero_f, scores)
        dropped = op.ScatterElements(rest, idx, op.Mul(top_values, zero_f), axis=1)
        extra = op.CastLike(op.MatMul(op.Unsqueeze(dropped, axis1), op.Cast(x, to=1)), x)  # [B, 1, C]
        # The first `fuse` rows of extra, and the prefix rows 0..P-1 of x, as Gathers of index
        # vectors of attribute length (ConstantOfShape + CumSum), not Slices.
        extra = op.Gather(extra, op.ConstantOfShape(op.Unsqueeze(op.Constant(value_int=fuse), zero), value=[0]), axis=1)
        prefix_rows = op.Sub(op.CumSum(op.ConstantOfShape(prefix_1d, value=[1]), zero_s), one_s)  # [P]: 0..P-1
        out = op.Concat(op.Gather(x, prefix_rows, axis=1), kept, extra, axis=1)
        return out, idx

    return EvitSelect


def onnx_symbolic(
    x: torch.Tensor, attn: torch.Tensor, keep_rate: float, fuse: bool, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Export form: emits the ``tokcompile::EvitSelect`` node (traced by torch.onnx.export)."""
    B, N, C = x.shape
    k = keep_count(keep_rate, N, num_prefix)
    if k >= N - num_prefix:  # identity layer: no node at all
        return x, torch.arange(num_prefix, N, device=x.device).expand(B, N - num_prefix)
    out, kept = torch.onnx.ops.symbolic_multi_out(
        f"{ONNX_DOMAIN}::{ONNX_NAME}",
        [x, attn.float()],
        {
            "k": k,
            "num_prefix": num_prefix,
            "fuse": int(fuse),
            **plugin_attributes(PLUGIN, NATIVE),
        },
        dtypes=[x.dtype, torch.int64],
        shapes=[[B, num_prefix + k + int(fuse), C], [B, k]],
        version=1,
    )
    return out, kept
