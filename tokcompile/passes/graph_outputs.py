"""Named graph outputs: ``logits`` first, then whatever passes append (names in ``names.py``).

The one place that knows how the names are stored: in the output node's
``meta[names.OUTPUTS_KEY]``, in the order of the returned tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch.fx as fx

from .names import LOGITS, OUTPUTS_KEY


def output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def named_outputs(gm: fx.GraphModule) -> list[str]:
    """The names of ``gm``'s outputs in order (a captured graph: ``["logits"]``)."""
    return list(output_node(gm).meta.get(OUTPUTS_KEY, [LOGITS]))


def append_outputs(
    gm: fx.GraphModule, items: Sequence[tuple[str, fx.Node]], position: Optional[int] = None
) -> list[str]:
    """Add named outputs (at the end, or at ``position``); returns the new name list."""
    output = output_node(gm)
    names = named_outputs(gm)
    values = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    at = len(values) if position is None else position
    names[at:at] = [name for name, _ in items]
    values[at:at] = [node for _, node in items]
    output.args = (tuple(values),)
    output.meta[OUTPUTS_KEY] = names
    return names
