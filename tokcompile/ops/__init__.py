"""Token ops (``torch.ops.tokcompile.*``) and what export needs to know about each; and the
methods' other tensor math, as fx leaves that passes insert (one unit per module, each with its
tensor contract): ``cls_attention``, ``ats_cls_attention``, ``tome_metric``,
``proportional_attention``, ``avit_halting``, ``adavit_block``, ``padded_tokens``, ``token_ids``.

Importing this package registers every op with torch.library. Passes, export and tests use
the alias defined beside each op, e.g. ``from tokcompile.ops.evit_select import evit_select``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import _defaults
from . import ats_sample as _ats_sample
from . import compact_tokens as _compact
from . import evit_select as _evit_select
from . import tome_merge as _tome_merge


@dataclass(frozen=True)
class TokenOp:
    """One token op across layers: torch op ↔ export form ↔ ONNX node/function."""

    op: object  # torch.ops.tokcompile.<name>.default
    onnx_name: str  # node op_type in domain ONNX_DOMAIN, also the TensorRT plugin name
    onnx_symbolic: Callable  # traced at export: emits the node via torch.onnx.ops.symbolic*
    onnx_function: Callable[[int], object]  # opset -> onnxscript function (the body)
    plugin: bool = False  # a TensorRT plugin of the same name exists (plugins/<name>Plugin/)
    native: bool = True  # the body runs as specified on TensorRT layers (--plugins auto prefers it)


def _token_op(module: object, op: object) -> TokenOp:
    """The registry entry of an op module (its ONNX_NAME, onnx_symbolic, onnx_function, PLUGIN, NATIVE)."""
    m: object = module
    plugin, native = bool(getattr(m, "PLUGIN", False)), bool(getattr(m, "NATIVE", True))
    return TokenOp(op, m.ONNX_NAME, m.onnx_symbolic, m.onnx_function, plugin=plugin, native=native)  # type: ignore[attr-defined]


ONNX_DOMAIN = _defaults.ONNX_DOMAIN

TOKEN_OPS: dict[object, TokenOp] = {
    op.op: op
    for op in (
        _token_op(_evit_select, _evit_select.evit_select),
        _token_op(_tome_merge, _tome_merge.tome_merge),
        _token_op(_ats_sample, _ats_sample.ats_sample),
        _token_op(_compact, _compact.compact_tokens),
    )
}

# ONNX names of the ops that have a TensorRT plugin (the only nodes --plugins can route to one).
PLUGIN_OPS: frozenset[str] = frozenset(t.onnx_name for t in TOKEN_OPS.values() if t.plugin)
