"""insert_ats_sample: ATS sampling after the attention residual, padded tokens masked after it.

Rewrite, for each block l in ``ctx.layers`` (methods-reference.md §3.2; the official code picks
rows of A before A@V, which equals picking rows of ``x + proj(A@V)`` since proj is row-wise)::

    x = x + attn(norm1(x))              x = x + attn(norm1(x), mask)
                                        row = ats_cls_attention(q, k, mask, valid)   # eps-softmax CLS row
                                →       rows, count = ats_sample(row, v, valid, M_l)
                                        x = x[rows];  valid = arange(n) < count
    x = x + mlp(norm2(x))               x = x + mlp(norm2(x))

After the first sampling layer, every attention gets ``mask`` = 0 / -inf on padded keys (fused
SDPA with an additive mask), so a padded position never changes a real token: the token count
becomes per-image, the tensor shape stays n (the stage split and the runtime bucket it). The
graph outputs ``count_<l>`` [B] and ``kept_ids_<l>`` [B, n] (original token ids, -1 = padding).
The sampling nodes carry ``meta[BOUNDARY_KEY]`` (``split_stages`` cuts after them) and the
compacted tensors ``meta[TOKEN_DIM_KEY]`` (the runtime slices them to a bucket); keys in
``names.py``, the tensor functions in ``ops/`` (``ats_cls_attention``, ``padded_tokens``,
``token_ids``). Marks inserted ops with ``meta[TOKEN_OP_KEY]``; a block that has one is left alone.
"""

from __future__ import annotations

import logging
import operator
from typing import Optional

import torch.fx as fx

from ..models.tracing import find_blocks
from ..ops.ats_cls_attention import ats_cls_attention
from ..ops.ats_sample import ats_sample
from ..ops.padded_tokens import all_valid, gather_tokens, valid_prefix
from ..ops.token_ids import initial_ids, sampled_ids
from .graph_outputs import append_outputs
from .manager import PassContext, PassResult, redirect_uses
from .names import BOUNDARY_KEY, TOKEN_DIM_KEY, TOKEN_OP_KEY, count_name, kept_ids_name
from .tokens import mask_padded_keys, token_op_nodes

logger = logging.getLogger(__name__)


def insert_ats_sample(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if token_op_nodes(gm) or not ctx.layers:
        return PassResult(gm, False)
    graph = gm.graph
    budgets = dict(zip(cfg.layers, cfg.max_tokens))
    valid: Optional[fx.Node] = None
    ids: Optional[fx.Node] = None
    outputs: list[tuple[str, fx.Node]] = []
    for block in find_blocks(gm):
        if valid is not None:  # mask padded keys of every attention after the first compaction
            mask_padded_keys(graph, block, valid)
        if block.index not in budgets:
            continue
        x = block.attn_residual
        with graph.inserting_before(x.next):  # keeps the inserted nodes in program order
            if valid is None:
                valid = graph.call_function(all_valid, (x,))
                ids = graph.call_function(initial_ids, (x,))
            row = graph.call_function(ats_cls_attention, (block.q, block.k, valid, block.sdpa.kwargs.get("scale")))
            op = graph.call_function(ats_sample, (row, block.sdpa.args[2], valid, budgets[block.index] - 1))
            rows = graph.call_function(operator.getitem, (op, 0))
            count = graph.call_function(operator.getitem, (op, 1))
            tokens = graph.call_function(gather_tokens, (x, rows))
            valid = graph.call_function(valid_prefix, (rows, count))
            ids = graph.call_function(sampled_ids, (ids, rows, valid))
        redirect_uses(x, tokens, keep=(tokens,), keep_targets=(all_valid, initial_ids))
        op.meta[TOKEN_OP_KEY] = block.index
        for node in (tokens, valid, ids):
            node.meta[TOKEN_DIM_KEY] = 1
        for node in (op, rows, count, tokens, valid, ids):
            node.meta[BOUNDARY_KEY] = block.index
        outputs += [(count_name(block.index), count), (kept_ids_name(block.index), ids)]
    if not outputs:  # none of cfg.layers is a block of this graph: nothing was inserted
        return PassResult(gm, False)
    names = append_outputs(gm, outputs)
    ctx.info["outputs"] = names
    logger.info(
        "insert_ats_sample: %d ops (blocks %s, budgets %s)", len(budgets), list(budgets), list(budgets.values())
    )
    return PassResult(gm, True)
