"""``tokcompile::compact_tokens``: move the tokens to keep to the front, in order.

Contract::

    keep:   [B, n] bool   tokens to keep; position 0 (CLS) must be kept
    returns (rows [B, n] int64, count [B] int64)
    rows[b, :count[b]] = positions p with keep[b, p], ascending; the rest are the other
    positions (ascending), which callers mask as padding.

Used where a token count becomes data-dependent by a mask rather than by sampling (A-ViT's
halting). Implemented as a sort on the unique key ``keep·n + (n − 1 − p)``, so torch and the ONNX
body (TopK on unique keys) order identically whatever TopK's tie rule is.
"""

from __future__ import annotations

import typing

import onnxscript
import torch
from onnxscript import opset18 as op

from .. import _defaults
from ..errors import TokcompileError
from .lowering import plugin_attributes

ONNX_DOMAIN = _defaults.ONNX_DOMAIN
ONNX_NAME = "CompactTokens"
PLUGIN = False  # no TensorRT plugin: the node never carries plugin attributes
NATIVE = True  # the body (TopK on unique keys) is its only lowering


def compact_tokens_reference(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = keep.shape[1]
    position = torch.arange(n, device=keep.device)
    key = keep.to(torch.int64) * n + (n - 1 - position)
    rows = key.argsort(dim=1, descending=True)
    return rows, keep.sum(dim=1)


@torch.library.custom_op("tokcompile::compact_tokens", mutates_args=())
def _compact_tokens_op(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return compact_tokens_reference(keep)


@_compact_tokens_op.register_fake
def _compact_tokens_fake(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return keep.new_empty(keep.shape, dtype=torch.int64), keep.new_empty(keep.shape[:1], dtype=torch.int64)


compact_tokens = torch.ops.tokcompile.compact_tokens.default


def onnx_function(opset_version: int) -> onnxscript.values.OnnxFunction:
    """The body: TopK over the unique keys, with n as a shape value (``Shape(start=1, end=2)``) and
    positions as a CumSum (no Slice/Range, which TensorRT's parser expands into shape layers)."""
    if opset_version != 18:
        raise TokcompileError(f"CompactTokens' ONNX body is written for opset 18, not {opset_version}")

    @typing.no_type_check  # onnxscript's DSL: op signatures mypy cannot type (traced, not run)
    @onnxscript.script(onnxscript.values.Opset(ONNX_DOMAIN, 1), default_opset=op)
    def CompactTokens(keep):
        tokens = op.Constant(value_ints=[1])
        keep_f = op.Cast(keep, to=1)
        place = op.CumSum(op.Cast(op.Or(keep, op.Not(keep)), to=1), op.Constant(value_int=1))  # [B, n]: 1..n
        n_f = op.ReduceMax(place, tokens, keepdims=1)  # [B, 1]
        key = op.Add(op.Mul(keep_f, n_f), op.Sub(n_f, place))  # keep·n + (n - 1 - position), unique
        key_values, rows = op.TopK(key, op.Shape(keep, start=1, end=2), axis=1, largest=1, sorted=1)
        count = op.ReduceSum(op.Cast(keep, to=7), tokens, keepdims=0)
        return rows, count

    return CompactTokens


def onnx_symbolic(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, count = torch.onnx.ops.symbolic_multi_out(
        f"{ONNX_DOMAIN}::{ONNX_NAME}",
        [keep],
        plugin_attributes(PLUGIN, NATIVE),
        dtypes=[torch.int64, torch.int64],
        shapes=[list(keep.shape), [keep.shape[0]]],
        version=1,
    )
    return rows, count
