"""insert_evit_select: EViT token selection after the attention residual, before the MLP.

Rewrite, for each block in ``ctx.layers`` (methods-reference.md §1.2)::

    x = x + attn(norm1(x))                  x = x + attn(norm1(x))
    x = x + mlp(norm2(x))        →          x, kept = evit_select(x, cls_row, keep, fuse, P)
                                            x = x + mlp(norm2(x))

``cls_row`` is the node added by ``capture_cls_attention`` for the same block, which must run
first. Inserted nodes carry ``meta[TOKEN_OP_KEY]`` (block index, ``names.py``); a block that
already has one is left alone, so the pass is idempotent.
"""

from __future__ import annotations

import logging
import operator

import torch.fx as fx

from ..errors import TokcompileError
from ..models.tracing import find_blocks
from ..ops.evit_select import evit_select
from .capture_cls_attention import cls_attention_nodes
from .manager import PassContext, PassResult, redirect_uses
from .names import TOKEN_OP_KEY
from .tokens import token_op_nodes

logger = logging.getLogger(__name__)


def insert_evit_select(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    rows = cls_attention_nodes(gm)
    done = {n.meta[TOKEN_OP_KEY] for n in token_op_nodes(gm)}
    inserted = []
    for block in find_blocks(gm):
        if block.index not in ctx.layers or block.index in done:
            continue
        if block.index not in rows:
            raise TokcompileError(
                f"insert_evit_select: block {block.index} has no CLS attention row; run capture_cls_attention first"
            )
        x = block.attn_residual
        graph = gm.graph
        with graph.inserting_after(x):
            sel = graph.call_function(
                evit_select, (x, rows[block.index], cfg.keep_rate, cfg.fuse, ctx.spec.num_prefix_tokens)
            )
        with graph.inserting_after(sel):
            tokens = graph.call_function(operator.getitem, (sel, 0))
        with graph.inserting_after(tokens):
            graph.call_function(operator.getitem, (sel, 1))
        redirect_uses(x, tokens, keep=(sel,))
        sel.meta[TOKEN_OP_KEY] = block.index
        sel.meta["nn_module_stack"] = dict(x.meta.get("nn_module_stack", {}))
        inserted.append(block.index)
    logger.info(
        "insert_evit_select: %d ops (blocks %s, keep %s, fuse %s)", len(inserted), inserted, cfg.keep_rate, cfg.fuse
    )
    return PassResult(gm, bool(inserted))
