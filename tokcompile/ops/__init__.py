"""Token ops (``torch.ops.tokcompile.*``) and what export needs to know about each.

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


ONNX_DOMAIN = _defaults.ONNX_DOMAIN

TOKEN_OPS: dict[object, TokenOp] = {
    op.op: op
    for op in (
        TokenOp(
            _evit_select.evit_select, _evit_select.ONNX_NAME, _evit_select.onnx_symbolic, _evit_select.onnx_function
        ),
        TokenOp(_tome_merge.tome_merge, _tome_merge.ONNX_NAME, _tome_merge.onnx_symbolic, _tome_merge.onnx_function),
        TokenOp(_ats_sample.ats_sample, _ats_sample.ONNX_NAME, _ats_sample.onnx_symbolic, _ats_sample.onnx_function),
        TokenOp(_compact.compact_tokens, _compact.ONNX_NAME, _compact.onnx_symbolic, _compact.onnx_function),
    )
}
