"""Cut a graph into stages (after ``split_stages`` assigned each node one) and export each.

A stage is a GraphModule of its own whose placeholders are the values it reads from earlier
stages (named after them) and whose outputs are the values later stages or the model's outputs
need. Parameters are copied into every stage that reads them, never passed between stages.
Tensors marked ``meta[TOKEN_DIM_KEY]`` (``passes/names.py``) keep a dynamic token dimension in the stage's
ONNX, so one file serves every bucket; the runtime slices them to the bucket between stages.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from ..manifest import ExtraDim, StageEntry
from ..passes.graph_outputs import named_outputs, output_node
from ..passes.names import COUNT_DIM_KEY, PRIMARY_DIM, STAGE_KEY, TOKEN_DIM_KEY, TOKEN_OP_KEY, dim_name
from .onnx import INPUT_NAME, GraphInput, onnx_from_graph_module


@dataclass
class Stage:
    index: int
    module: fx.GraphModule
    inputs: list[str]
    outputs: list[str]
    token_values: list[str]  # inputs/outputs whose dim 1 is the token dimension
    count: str | None = None  # output holding the per-image token count that ends this stage
    # every dynamic-dim value: name → dim ("tokens", or an extra dim such as AdaViT's "heads")
    value_dims: dict[str, str] = field(default_factory=dict)
    # extra data-dependent dims this stage ends with: {"name", "count", "values"}; cut exactly
    extra_dims: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def cut_stages(gm: fx.GraphModule) -> tuple[list[Stage], dict[str, str]]:
    """Stages in order, and model output name → the value (stage output) that holds it."""
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    count = 1 + max((n.meta.get(STAGE_KEY, 0) for n in nodes), default=0)
    out = output_node(gm)
    final_values: list[fx.Node] = []
    for value in out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]:
        if not isinstance(value, fx.Node):
            raise RuntimeError(f"model output {value!r} is not a graph value")
        final_values.append(value)
    final = dict(zip(named_outputs(gm), (v.name for v in final_values)))
    needed_later: dict[fx.Node, int] = {}  # value → last stage that reads it (count = model output)
    for n in nodes:
        for inp in n.all_input_nodes:
            if inp.op != "get_attr":
                needed_later[inp] = max(needed_later.get(inp, 0), n.meta.get(STAGE_KEY, 0))
    for v in final_values:
        needed_later[v] = count
    stages = []
    for k in range(count):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        inputs: list[str] = []

        def read(node: fx.Node, graph=graph, env=env, inputs=inputs) -> fx.Node:
            if node not in env:
                if node.op == "get_attr":
                    env[node] = graph.get_attr(node.target)
                else:  # a value from an earlier stage (or the model input)
                    env[node] = graph.placeholder(node.name)
                    env[node].meta.update(node.meta)
                    inputs.append(node.name)
            return env[node]

        own = [n for n in nodes if n.meta.get(STAGE_KEY, 0) == k and n.op not in ("get_attr",)]
        if k == 0:
            own = [n for n in own if n.op != "placeholder"]
            for p in (n for n in nodes if n.op == "placeholder"):
                read(p)
        for n in own:
            env[n] = graph.node_copy(n, read)
        produced = [n for n in own if needed_later.get(n, -1) > k]
        graph.output(tuple(env[n] for n in produced))
        module = fx.GraphModule(gm, graph, class_name=f"Stage{k}")
        dims = {
            n.name: dim_name(n.meta[TOKEN_DIM_KEY])
            for n in (*produced, *(p for p in nodes if p.name in inputs))
            if n.meta.get(TOKEN_DIM_KEY)
        }
        counts = {
            dim_name(n.args[0].meta.get(COUNT_DIM_KEY)): n.name
            for n in produced
            if n.target is operator.getitem
            and n.args[1] == 1
            and (TOKEN_OP_KEY in n.args[0].meta or COUNT_DIM_KEY in n.args[0].meta)
        }
        last = k == count - 1
        outputs = [n.name for n in produced]
        stages.append(
            Stage(
                k,
                module,
                inputs,
                outputs,
                sorted(name for name, d in dims.items() if d == PRIMARY_DIM),
                counts.get(PRIMARY_DIM) if not last else None,
                value_dims=dims,
                extra_dims=[
                    {"name": d, "count": c, "values": sorted(v for v, vd in dims.items() if vd == d and v in outputs)}
                    for d, c in sorted(counts.items())
                    if d != PRIMARY_DIM and not last
                ],
            )
        )
    return stages, final


@torch.no_grad()
def stage_examples(gm: fx.GraphModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every intermediate value of ``gm`` on ``images``, by node name (example inputs for export)."""
    env: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            env[n.name] = value
            return value

    Recorder(gm).run(images)
    return env


def export_stages(
    gm: fx.GraphModule,
    stages: list[Stage],
    input_shape: tuple[int, ...],
    directory: Path,
    precision: str,
    prefix: str = "stage",
    plugins: str | None = None,
) -> list[StageEntry]:
    """Export every stage to ``directory/<prefix><k>.onnx`` (``plugins``: on|off|auto, see
    ``onnx_from_graph_module``); returns the manifest's stage entries (ONNX Runtime runs each file
    itself, in ``precision``, until the build decides otherwise)."""
    examples = stage_examples(gm, torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)))
    entries = []
    for stage in stages:
        inputs = [
            GraphInput(
                INPUT_NAME if name == "x" and stage.index == 0 else name,
                examples[name],
                stage.value_dims.get(name, False),
            )
            for name in stage.inputs
        ]
        file = f"{prefix}{stage.index}.onnx"
        facts = onnx_from_graph_module(
            stage.module, input_shape, directory / file, stage.outputs, inputs=inputs, plugins=plugins
        )
        # max: the dim's full size (the examples are uncut), for TensorRT profile ranges
        extra_dims = [
            ExtraDim(d["name"], d["count"], d["values"], int(examples[d["values"][0]].shape[1]))
            for d in stage.extra_dims
        ]
        entries.append(
            _entry(stage.index, file, facts, stage.inputs, precision, stage.token_values, stage.count, extra_dims)
        )
    return entries


def _entry(
    index: int,
    file: str,
    facts: dict[str, Any],
    values_in: list[str],
    precision: str,
    token_values: list[str],
    count: str | None,
    extra_dims: list[ExtraDim],
) -> StageEntry:
    return StageEntry(
        index=index,
        file=file,
        inputs=facts["inputs"],
        values_in=values_in,
        outputs=facts["outputs"],
        onnxruntime_file=file,
        onnxruntime_precision=precision,
        token_inputs=facts["token_inputs"],
        token_values=token_values,
        count=count,
        extra_dims=extra_dims,
        input_types=facts["input_types"],
        opset=facts["opset"],
        custom_nodes=facts["custom_nodes"],
        plugin_nodes=facts["plugin_nodes"],
        native_nodes=facts["native_nodes"],
    )


def is_staged(gm: fx.GraphModule) -> bool:
    """Whether ``split_stages`` cut ``gm`` into more than one stage."""
    return any(n.meta.get(STAGE_KEY, 0) > 0 for n in gm.graph.nodes)


def export_model(
    gm: fx.GraphModule,
    input_shape: tuple[int, ...],
    directory: Path,
    prefix: str,
    precision: str,
    plugins: str | None = None,
) -> tuple[list[StageEntry], dict[str, str]]:
    """Export ``gm`` as one file (``<prefix>.onnx``) or, when ``split_stages`` cut it, one file per
    stage (``<prefix><k>.onnx``), with the ``plugins`` lowering (on|off|auto). Returns the stage
    entries and model output name → the value that holds it."""
    names = named_outputs(gm)
    if not is_staged(gm):
        file = f"{prefix}.onnx"
        facts = onnx_from_graph_module(gm, input_shape, directory / file, names, plugins=plugins)
        return [_entry(0, file, facts, facts["inputs"], precision, [], None, [])], {n: n for n in names}
    stages, final = cut_stages(gm)
    return export_stages(gm, stages, input_shape, directory, precision, prefix, plugins), final
