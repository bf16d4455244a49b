"""output_merge_maps: expose, per ToMe layer, where every original token went.

Rewrite::

    return (logits, *rest)      →      return (logits, *rest, merge_map_<block>, ...)

``merge_map_<block>`` is [B, N0] int64: for each token of the original sequence (0 = first
prefix token, then patches, N0 tokens in all) its position in that layer's output, i.e. the
merged token it now belongs to. Layer maps compose the merges' ``dest`` outputs::

    map_first = dest_first;  map_l = dest_l.gather(1, map_{l-1})

Two runs agree on a layer exactly when the maps induce the same grouping of original tokens
(``compare`` canonicalises the group labels); positions alone may differ only if the order did.
"""

from __future__ import annotations

import logging
import operator

import torch.fx as fx

from ..ops.token_ids import compose_merge_map
from .graph_outputs import append_outputs, named_outputs, output_node
from .insert_tome_merge import merge_output, tome_merge_nodes
from .manager import PassContext, PassResult
from .names import MERGE_MAP, TOKEN_OP_KEY, is_kind, merge_map_name

logger = logging.getLogger(__name__)


def output_merge_maps(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    merges = tome_merge_nodes(gm)
    if not merges or any(is_kind(name, MERGE_MAP) for name in named_outputs(gm)):
        return PassResult(gm, False)
    graph = gm.graph
    items = []
    current = None
    with graph.inserting_before(output_node(gm)):
        for merge in merges:
            dest = merge_output(merge, 2)
            if dest is None:
                dest = graph.call_function(operator.getitem, (merge, 2))
            current = dest if current is None else graph.call_function(compose_merge_map, (current, dest))
            items.append((merge_map_name(merge.meta[TOKEN_OP_KEY]), current))
    ctx.info["outputs"] = append_outputs(gm, items)
    logger.info("output_merge_maps: %s", ", ".join(name for name, _ in items))
    return PassResult(gm, True)
