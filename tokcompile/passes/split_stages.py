"""split_stages: assign every node to a stage; a stage ends where a token count becomes known.

No rewrite: sets ``node.meta[STAGE_KEY]`` (``names.py``). A node runs in the stage of its latest
input, one stage later when that input belongs to a boundary group (the nodes a token op marks
with ``meta[BOUNDARY_KEY]``: the op, its compacted tokens, validity mask and counts)
that the node itself is not part of. So each stage ends with a compaction, and inside a stage
every shape follows from the stage's input token count, its bucket (DESIGN.md §1.4).
Parameters (get_attr) go to the stage of their first user, so no weight crosses a stage.
``ctx.info["stages"]`` is the number of stages (1 for static methods).
"""

from __future__ import annotations

import logging

import torch.fx as fx

from .manager import PassContext, PassResult
from .names import BOUNDARY_KEY, STAGE_KEY

logger = logging.getLogger(__name__)


def split_stages(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    stage: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        best = 0
        for inp in node.all_input_nodes:
            if inp.op == "get_attr":
                continue
            group = inp.meta.get(BOUNDARY_KEY)
            crosses = group is not None and node.meta.get(BOUNDARY_KEY) != group
            best = max(best, stage.get(inp, 0) + int(crosses))
        stage[node] = best
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            stage[node] = 0
        elif node.op == "get_attr":
            stage[node] = min((stage[u] for u in node.users if u in stage), default=0)
    changed = False
    for node, index in stage.items():
        changed |= node.meta.get(STAGE_KEY) != index
        node.meta[STAGE_KEY] = index
    ctx.info["stages"] = 1 + max(stage.values(), default=0)
    logger.info("split_stages: %d stages", ctx.info["stages"])
    return PassResult(gm, False)
