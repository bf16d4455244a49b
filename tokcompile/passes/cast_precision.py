"""cast_precision: make the graph fp16/bf16 with float32 islands (DESIGN.md §5).

Rewrite, for ``ctx.info["precision"]`` in {fp16, bf16}::

    images (float32) → .to(dtype) → ... → logits.float(), features.float()
    layer_norm(x)    → layer_norm(x.float()).to(dtype)     (statistics in float32)
    conv(x)          → conv(x.float()).to(dtype)           (bf16 only: opset 18 has no bf16 Conv)

Parameters become ``dtype`` except LayerNorm's, which stay float32. Scoring and selection are
already float32 (``cls_attention_row``, token ops), so a precision change cannot flip a
selection through its arithmetic, only through the tokens it reads. For fp32 the pass does
nothing. Graph inputs and the logits stay float32, so the bundle's interface does not depend
on its precision.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..precision import check_precision
from .graph_outputs import named_outputs
from .manager import PassContext, PassResult, redirect_uses
from .names import FLOAT_OUTPUTS, PRECISION_KEY

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # keys: precision.PRECISIONS


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name; a one-line user error for an unknown name."""
    return DTYPES[check_precision(precision)]


def _is_float32_island(gm: fx.GraphModule, node: fx.Node, dtype: torch.dtype) -> bool:
    """LayerNorm always; the patch-embedding Conv for bf16, which ONNX opset 18 does not type."""
    if node.op == "call_function":
        return node.target is F.layer_norm
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return isinstance(module, torch.nn.LayerNorm) or (
            dtype is torch.bfloat16 and isinstance(module, torch.nn.Conv2d)
        )
    return False


def _keep_float32(gm: fx.GraphModule, node: fx.Node) -> None:
    """Return an island's parameters to float32 (module or get_attr operands)."""
    if node.op == "call_module":
        gm.get_submodule(str(node.target)).float()
        return
    for arg in (*node.args, *node.kwargs.values()):
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            owner, _, name = str(arg.target).rpartition(".")
            module = gm.get_submodule(owner) if owner else gm
            tensor = getattr(module, name)
            tensor.data = tensor.data.float()


def cast_precision(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    precision = ctx.info.get("precision", "fp32")
    dtype = precision_dtype(precision)
    done = gm.meta.get(PRECISION_KEY)
    if done is not None and done != precision:  # its casts and islands would stack: a broken graph
        raise ValueError(f"the graph is already cast to {done}; capture the model again to build {precision}")
    if dtype is torch.float32 or done == precision:
        return PassResult(gm, False)
    graph = gm.graph
    gm.to(dtype)
    for node in graph.nodes:
        if _is_float32_island(gm, node, dtype):
            _keep_float32(gm, node)
    islands = 0
    for node in list(graph.nodes):
        if node.op == "placeholder":
            with graph.inserting_after(node):
                cast = graph.call_method("to", (node, dtype))
            redirect_uses(node, cast, keep=(cast,))
        elif _is_float32_island(gm, node, dtype):
            with graph.inserting_before(node):
                up = graph.call_method("float", (node.args[0],))
            node.args = (up, *node.args[1:])
            with graph.inserting_after(node):
                down = graph.call_method("to", (node, dtype))
            redirect_uses(node, down, keep=(down,))
            islands += 1
        elif node.op == "output":
            values = node.args[0] if isinstance(node.args[0], tuple) else (node.args[0],)
            names = named_outputs(gm)
            with graph.inserting_before(node):
                values = tuple(
                    graph.call_method("float", (v,)) if name in FLOAT_OUTPUTS else v for v, name in zip(values, names)
                )
            node.args = (values if isinstance(node.args[0], tuple) else values[0],)
    gm.meta[PRECISION_KEY] = precision
    logger.info("cast_precision: %s with %d float32 islands", precision, islands)
    return PassResult(gm, True)
