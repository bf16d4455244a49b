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

import torch
import torch.fx as fx

from ..ops.evit_select import evit_select
from ._outputs import append_outputs, named_outputs, output_node
from ._tokens import initial_ids
from .insert_evit_select import TOKEN_OP_KEY, token_op_nodes
from .manager import PassContext, PassResult

logger = logging.getLogger(__name__)


@torch.fx.wrap
def gather_token_ids(
    ids: torch.Tensor, kept_pos: torch.Tensor, out: torch.Tensor, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids: [B, N] ids of the op's input; kept_pos: [B, k] positions kept; out: the op's tokens.

    Returns (ids of out [B, N'], ids of the kept tokens [B, k]); extra tokens an op appends
    after the kept ones (EViT's fused token) get id -1.
    """
    kept = ids.gather(1, kept_pos)
    extra = out.shape[1] - num_prefix - kept_pos.shape[1]
    parts = [ids[:, :num_prefix], kept]
    if extra > 0:
        parts.append(torch.full_like(ids[:, :extra], -1))
    return torch.cat(parts, dim=1), kept


def output_kept_indices(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    ops = [n for n in token_op_nodes(gm) if n.target is evit_select]  # other ops: their own output pass
    if not ops or any(name.startswith("kept_ids_") for name in named_outputs(gm)):
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
            items.append((f"kept_ids_{sel.meta[TOKEN_OP_KEY]}", graph.call_function(operator.getitem, (pair, 1))))
    ctx.info["outputs"] = append_outputs(gm, items)
    logger.info("output_kept_indices: %s", ", ".join(name for name, _ in items))
    return PassResult(gm, True)
