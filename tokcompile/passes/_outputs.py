"""Named graph outputs shared by passes: ``logits`` first, then whatever passes append."""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx as fx

OUTPUT_META = "tokcompile.outputs"


def output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def named_outputs(gm: fx.GraphModule) -> list[str]:
    return list(output_node(gm).meta.get(OUTPUT_META, ["logits"]))


def append_outputs(gm: fx.GraphModule, items: Sequence[tuple[str, fx.Node]], position: int | None = None) -> list[str]:
    """Add named outputs (at the end, or at ``position``); returns the new name list."""
    output = output_node(gm)
    names = named_outputs(gm)
    values = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    at = len(values) if position is None else position
    names[at:at] = [name for name, _ in items]
    values[at:at] = [node for _, node in items]
    output.args = (tuple(values),)
    output.meta[OUTPUT_META] = names
    return names
