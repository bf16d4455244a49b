"""ONNX export of a rewritten GraphModule: ``onnx_from_graph_module``.

torch.onnx.export(dynamo=True) traces the module; each token op is swapped for its export form,
which emits one ``tokcompile::<Name>`` node through ``torch.onnx.ops.symbolic``. The node's
body is then attached as a model-local ONNX function, the graph is cleaned with
onnx-graphsurgeon and checked with ``onnx.checker`` (DESIGN.md §2).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.fx as fx

from .. import _defaults
from ..ops import ONNX_DOMAIN, TOKEN_OPS
from ..ops.lowering import PLUGIN_ATTRIBUTES, plugin_lowering
from ..passes.names import PRIMARY_DIM, dim_name
from .fold_shapes import fold_static_shapes

logger = logging.getLogger(__name__)

INPUT_NAME = "images"


def _export_form(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` whose token-op nodes call their ONNX export forms."""
    out = copy.deepcopy(gm)
    for node in out.graph.nodes:
        if node.op == "call_function" and node.target in TOKEN_OPS:
            node.target = TOKEN_OPS[node.target].onnx_symbolic
    out.recompile()
    return out


def scoped_function(fn: onnx.FunctionProto) -> onnx.FunctionProto:
    """``fn`` with every node and value name prefixed by ``<function name>/``.

    TensorRT's parser inlines a function body under the names it has (onnx-tensorrt
    ``LocalFunctionImporter``): a body value named like an outer tensor, e.g. ``zeros``, is
    shadowed while the body is imported, and a body INPUT named like an outer tensor is not bound
    to the node's input at all (the parser warns "does not correspond to an outside scope name"
    and reads the outer tensor). Node names of different bodies, or of a body and the main graph,
    collided as well (onnxscript numbers every body's nodes n0, n1, ...). The prefix makes every
    body name unique in the file; repeated call sites of one function still repeat its names,
    because the parser looks local functions up by name alone (ignoring IR 10 overloads)."""
    scoped = onnx.FunctionProto()
    scoped.CopyFrom(fn)
    prefix = f"{fn.name}/"

    def rename(names) -> None:  # a repeated string field, renamed in place
        for i, name in enumerate(names):
            if name:
                names[i] = prefix + name

    rename(scoped.input)
    rename(scoped.output)
    for i, node in enumerate(scoped.node):
        node.name = prefix + (node.name or f"{node.op_type}_{i}")
        rename(node.input)
        rename(node.output)
    for value in scoped.value_info:
        value.name = prefix + value.name
    return scoped


def _attach_functions(model: onnx.ModelProto, opset: int) -> list[str]:
    """Add the body of every tokcompile node as a model-local function; returns the node types."""
    used = sorted({n.op_type for n in model.graph.node if n.domain == ONNX_DOMAIN})
    by_name = {t.onnx_name: t for t in TOKEN_OPS.values()}
    present = {f.name for f in model.functions if f.domain == ONNX_DOMAIN}
    for name in used:
        if name not in present:
            body: Any = by_name[name].onnx_function(opset)  # an onnxscript OnnxFunction
            model.functions.append(scoped_function(body.to_function_proto()))
    if used and not any(o.domain == ONNX_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(ONNX_DOMAIN, 1))
    return used


def lowering_counts(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Token-op nodes of the main graph by op type: (with plugin attributes, without them)."""
    plugin: dict[str, int] = {}
    native: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == ONNX_DOMAIN:
            routed = any(a.name in PLUGIN_ATTRIBUTES for a in node.attribute)
            counts = plugin if routed else native
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(plugin.items())), dict(sorted(native.items()))


def _cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    cleaned = gs.export_onnx(graph, do_type_check=False)
    # graphsurgeon rebuilds the model; keep functions and opset imports exactly as exported.
    del cleaned.functions[:]
    cleaned.functions.extend(model.functions)
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(model.opset_import)
    cleaned.ir_version = model.ir_version
    return cleaned


@dataclass(frozen=True)
class GraphInput:
    """One graph input for export: its name, an example value, and whether dim 1 is tokens."""

    name: str
    example: torch.Tensor
    token_dim: bool | str = False  # True or a dimension name ("tokens", "heads", ...): dim 1 is dynamic


def onnx_from_graph_module(
    gm: fx.GraphModule,
    input_shape: Sequence[int],
    path: Path,
    output_names: Sequence[str],
    opset: int | None = None,
    inputs: Sequence[GraphInput] | None = None,
    plugins: str | None = None,
) -> dict:
    """Export ``gm`` to ``path``; the batch dimension of every input is dynamic.

    By default the graph takes ``images`` [B, *input_shape] float32. A stage of a staged model
    passes ``inputs`` instead; those marked ``token_dim`` get a dynamic token dimension too, so
    one file serves every bucket. ``plugins`` (on|off|auto, default auto) chooses which token-op
    nodes carry the TensorRT plugin attributes (ops/lowering.py). Returns facts for the manifest.
    """
    opset = opset or _defaults.ONNX_OPSET
    module = _export_form(gm).eval()
    if inputs is None:
        inputs = [GraphInput(INPUT_NAME, torch.zeros(2, *input_shape))]
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims: dict[str, Any] = {}
    for i in inputs:
        if i.token_dim:
            name = dim_name(i.token_dim)  # the primary token dim starts at 2 (CLS + one token)
            dims.setdefault(name, torch.export.Dim(name, min=2 if name == PRIMARY_DIM else 1, max=65536))
    dynamic = tuple({0: batch, 1: dims[dim_name(i.token_dim)]} if i.token_dim else {0: batch} for i in inputs)
    with plugin_lowering(plugins), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                tuple(i.example for i in inputs),
                dynamo=True,
                opset_version=opset,
                input_names=[i.name for i in inputs],
                output_names=list(output_names),
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            raise RuntimeError(f"torch.onnx.export failed: {exc}") from exc
    if program is None:  # dynamo=True always returns a program; None only from the legacy exporter
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    custom = _attach_functions(model, opset)
    model = _cleanup(fold_static_shapes(model))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"exported ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    plugin_nodes, native_nodes = lowering_counts(model)
    return {
        "opset": opset,
        "custom_nodes": custom,
        "plugin_nodes": plugin_nodes,
        "native_nodes": native_nodes,
        "input_types": {
            v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower() for v in model.graph.input
        },
        "inputs": [i.name for i in inputs],
        "token_inputs": [i.name for i in inputs if i.token_dim],
        "outputs": list(output_names),
        "input": inputs[0].name,
    }
