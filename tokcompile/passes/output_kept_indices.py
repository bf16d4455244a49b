"""output_kept_indices: expose, per token op, which original tokens it kept.

Rewrite::

    return logits      →      return (logits, kept_ids_<block>, ...)

``kept_ids_<block>`` is [B, k] int64: positions in the *input* token sequence (0 = CLS,
1.. = patches) of the tokens the op kept, in the op's output order. A fused token created by
an earlier layer has id -1. Because ids refer to the original sequence, two runs agree on a
layer exactly when they kept the same tokens, even if an earlier layer ordered them differently.
``compare`` reads these outputs; the bundle runner drops them unless asked.
"""

from __future__ import annotations

import logging
import operator

import torch.fx as fx

from ..ops.evit_select import evit_select
from ..ops.token_ids import gather_token_ids, initial_ids
from .graph_outputs import append_outputs, named_outputs, output_node
from .manager import PassContext, PassResult
from .names import KEPT_IDS, TOKEN_OP_KEY, is_kind, kept_ids_name
from .tokens import token_op_nodes

logger = logging.getLogger(__name__)


def output_kept_indices(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    ops = [n for n in token_op_nodes(gm) if n.target is evit_select]  # other ops: their own output pass
    if not ops or any(is_kind(name, KEPT_IDS) for name in named_outputs(gm)):
        return PassResult(gm, False)
    graph = gm.graph
    items = []
    ids = None
    with graph.inserting_before(output_node(gm)):
        for sel in ops:
            getters = {u.args[1]: u for u in sel.users if u.target is operator.getitem}
            if ids is None:
                ids = graph.call_function(initial_ids, (sel.args[0],))
            pair = graph.call_function(gather_token_ids, (ids, getters[1], getters[0], ctx.spec.num_prefix_tokens))
            ids = graph.call_function(operator.getitem, (pair, 0))
            items.append((kept_ids_name(sel.meta[TOKEN_OP_KEY]), graph.call_function(operator.getitem, (pair, 1))))
    ctx.info["outputs"] = append_outputs(gm, items)
    logger.info("output_kept_indices: %s", ", ".join(name for name, _ in items))
    return PassResult(gm, True)
