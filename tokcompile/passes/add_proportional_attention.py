"""add_proportional_attention: ToMe's proportional attention as an additive attention bias.

Rewrite, for every block whose attention runs after a ``tome_merge`` (methods-reference.md
§2.2: ``logits += log(size)[key]``, the same bias for every head and query)::

    sdpa(q, k, v, attn_mask=None)   →   sdpa(q, k, v, attn_mask=size_attention_bias(size, q))

``size`` is the size output of the latest merge before the block, so block 0 (and any block
before the first merge) gets no bias. The bias is [B, 1, 1, N] in q's dtype: fused attention
stays, it only gains an additive mask. Does nothing when ``ctx.config.prop_attn`` is false or
there are no merges; biased calls carry ``meta[PROP_ATTN_KEY]`` (idempotence). The bias function
is ``ops/proportional_attention.py``.
"""

from __future__ import annotations

import logging

import torch.fx as fx

from ..errors import TokcompileError
from ..models.tracing import find_blocks
from ..ops.proportional_attention import size_attention_bias
from .insert_tome_merge import merge_output, tome_merge_nodes
from .manager import PassContext, PassResult
from .names import PROP_ATTN_KEY

logger = logging.getLogger(__name__)


def add_proportional_attention(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if not getattr(ctx.config, "prop_attn", False):
        return PassResult(gm, False)
    merges = tome_merge_nodes(gm)
    if not merges:
        return PassResult(gm, False)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sizes = [(order[m], merge_output(m, 1)) for m in merges]
    biased: list[int] = []
    for block in find_blocks(gm):
        sdpa = block.sdpa
        before = [size for position, size in sizes if position < order[sdpa]]
        if not before or PROP_ATTN_KEY in sdpa.meta:
            continue
        if sdpa.kwargs.get("attn_mask") is not None or (len(sdpa.args) > 3 and sdpa.args[3] is not None):
            raise TokcompileError(
                f"add_proportional_attention: the attention of {block.path or f'block {block.index}'} already "
                "has a mask; build with --no-prop-attn"
            )
        with gm.graph.inserting_before(sdpa):
            bias = gm.graph.call_function(size_attention_bias, (before[-1], block.q))
        bias.meta["nn_module_stack"] = dict(sdpa.meta.get("nn_module_stack", {}))
        if len(sdpa.args) > 3:
            sdpa.update_arg(3, bias)
        else:
            sdpa.update_kwarg("attn_mask", bias)
        sdpa.meta[PROP_ATTN_KEY] = True
        biased.append(block.index)
    logger.info("add_proportional_attention: log(size) bias in %d blocks %s", len(biased), biased)
    return PassResult(gm, bool(biased))
