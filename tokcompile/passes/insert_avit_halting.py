"""insert_avit_halting: A-ViT adaptive halting with halted tokens removed, not masked.

Rewrite (methods-reference.md §4.2, "zipped" form), for every block l with output y::

    h      = sigmoid(γ·y[:, :, 0] − β)          (h = 1 in the last block)
    c     += h                                   (cumulative halting score per token)
    CLS:   out += y_cls·(R if c ≥ 1−ε else h);  R −= h while running;  done when c ≥ 1−ε
    keep   = c < 1−ε  (and nothing of an image whose CLS halted; CLS itself always stays)
    rows, count = compact_tokens(keep);  x = y[rows];  c = c[rows];  valid = arange(n) < count

Every later attention masks padded keys (0 / -inf, fused SDPA), so halted tokens are absent as
in the official code's exp(−1000) masking. The classifier reads ``norm(out)`` at the CLS position,
the ponder-weighted CLS of §4.2, not the last block's CLS. Outputs ``count_<l>`` and
``kept_ids_<l>`` per block (tokens still running after block l), and each compaction is a stage
boundary, so the runtime buckets the next block. The halting arithmetic (``avit_init``,
``avit_update``, ``ponder_tokens``, ``gather_c``) is ``ops/avit_halting.py``.
"""

from __future__ import annotations

import logging
import operator
from typing import Optional

import torch.fx as fx

from ..models.tracing import find_blocks
from ..ops.avit_halting import avit_init, avit_update, gather_c, ponder_tokens
from ..ops.compact_tokens import compact_tokens
from ..ops.padded_tokens import all_valid, gather_tokens, valid_prefix
from ..ops.token_ids import initial_ids, sampled_ids
from .graph_outputs import append_outputs
from .manager import PassContext, PassResult, redirect_uses
from .names import BOUNDARY_KEY, TOKEN_DIM_KEY, TOKEN_OP_KEY, count_name, kept_ids_name
from .tokens import mask_padded_keys, token_op_nodes

logger = logging.getLogger(__name__)


def insert_avit_halting(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if token_op_nodes(gm):
        return PassResult(gm, False)
    graph = gm.graph
    blocks = find_blocks(gm)
    threshold = 1.0 - cfg.eps
    valid: Optional[fx.Node] = None
    outputs: list[tuple[str, fx.Node]] = []
    state: Optional[fx.Node] = None
    for block in blocks:
        if valid is not None:  # mask padded keys of every attention after the first compaction
            mask_padded_keys(graph, block, valid)
        y = block.mlp_residual
        last = block.index == blocks[-1].index
        with graph.inserting_before(y.next):
            if state is None:
                init = graph.call_function(avit_init, (y,))
                c, remainder, out, done = (graph.call_function(operator.getitem, (init, i)) for i in range(4))
                valid = graph.call_function(all_valid, (y,))
                ids = graph.call_function(initial_ids, (y,))
            step = graph.call_function(
                avit_update, (y, c, remainder, out, done, valid, cfg.gamma, cfg.beta, threshold, last)
            )
            parts = [graph.call_function(operator.getitem, (step, i)) for i in range(5)]
            c, remainder, out, done, keep = parts
            state = step
            if last:
                final = graph.call_function(ponder_tokens, (out, y))
            else:
                op = graph.call_function(compact_tokens, (keep,))
                rows = graph.call_function(operator.getitem, (op, 0))
                count = graph.call_function(operator.getitem, (op, 1))
                tokens = graph.call_function(gather_tokens, (y, rows))
                c = graph.call_function(gather_c, (c, rows))
                valid = graph.call_function(valid_prefix, (rows, count))
                ids = graph.call_function(sampled_ids, (ids, rows, valid))
        if last:
            redirect_uses(y, final, keep=(step, final))
            break
        kept = (step, tokens, init) if block.index == 0 else (step, tokens)
        redirect_uses(y, tokens, keep=kept, keep_targets=(all_valid, initial_ids))
        op.meta[TOKEN_OP_KEY] = block.index
        assert valid is not None  # set with the halting state of the first block
        for node in (tokens, c, valid, ids):
            node.meta[TOKEN_DIM_KEY] = 1
        for node in (op, rows, count, tokens, c, valid, ids, step, *parts):
            node.meta[BOUNDARY_KEY] = block.index
        outputs += [(count_name(block.index), count), (kept_ids_name(block.index), ids)]
    ctx.info["outputs"] = append_outputs(gm, outputs)
    logger.info("insert_avit_halting: %d blocks (γ %s, β %s, ε %s)", len(blocks), cfg.gamma, cfg.beta, cfg.eps)
    return PassResult(gm, True)
