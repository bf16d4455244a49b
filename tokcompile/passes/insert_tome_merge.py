"""insert_tome_merge: ToMe token merging after the attention residual, before the MLP.

Rewrite, for each block in ``ctx.layers`` (methods-reference.md §2.1), with ``r`` from
``ctx.config.r[block]`` and P = the model's prefix tokens::

    q, k, v = ...                           q, k, v = ...
    x = x + attn(norm1(x))                  x = x + attn(norm1(x))      # sdpa(q, k, v) kept
                                            metric = tome_metric(k)     # k.mean(heads), float32
                                  →         x, size, dest = tome_merge(x, metric, size, r, P)
    x = x + mlp(norm2(x))                   x = x + mlp(norm2(x))

``k`` is the block's ``scaled_dot_product_attention`` key input (after ``k_norm``). ``size``
starts as ``token_sizes(x)`` = ones [B, N, 1] float32, made from the tokens entering the first
merge, and is threaded from each merge to the next (``tome_metric`` and ``token_sizes`` in
``ops/tome_metric.py``). Inserted merges carry ``meta[TOKEN_OP_KEY]`` (block index,
``names.py``); a block that already has one is left alone, so the pass is idempotent.
"""

from __future__ import annotations

import logging
import operator
from typing import Optional

import torch.fx as fx

from ..models.tracing import find_blocks
from ..ops.tome_merge import tome_merge
from ..ops.tome_metric import token_sizes, tome_metric
from .manager import PassContext, PassResult, redirect_uses
from .names import TOKEN_OP_KEY, TOME_SIZES_KEY
from .tokens import token_op_nodes

logger = logging.getLogger(__name__)


def tome_merge_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """``tome_merge`` call nodes in graph order."""
    return [n for n in token_op_nodes(gm) if n.target is tome_merge]


def merge_output(merge: fx.Node, index: int) -> Optional[fx.Node]:
    """The ``getitem`` node of output ``index`` (0 tokens, 1 sizes, 2 dest) of a merge node."""
    return next((u for u in merge.users if u.target is operator.getitem and u.args[1] == index), None)


def _thread_sizes(gm: fx.GraphModule) -> None:
    """size input of each merge = the previous merge's size output; the first gets token_sizes."""
    merges = tome_merge_nodes(gm)
    graph = gm.graph
    initial = next((n for n in graph.nodes if n.meta.get(TOME_SIZES_KEY)), None)
    first = merges[0]
    if initial is None or initial.args[0] is not first.args[0]:
        stale = initial
        with graph.inserting_before(first):
            initial = graph.call_function(token_sizes, (first.args[0],))
        initial.meta[TOME_SIZES_KEY] = True
        if stale is not None:
            stale.replace_all_uses_with(initial)
            graph.erase_node(stale)
    size = initial
    for merge in merges:
        if merge.args[2] is not size:
            merge.update_arg(2, size)
        size = merge_output(merge, 1)


def insert_tome_merge(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    done = {n.meta[TOKEN_OP_KEY] for n in token_op_nodes(gm)}
    graph = gm.graph
    inserted: list[int] = []
    for block in find_blocks(gm):
        if block.index not in ctx.layers or block.index in done:
            continue
        x = block.attn_residual
        with graph.inserting_after(block.sdpa):
            metric = graph.call_function(tome_metric, (block.k,))
        with graph.inserting_after(x):
            # size is a placeholder here (x); _thread_sizes wires the real one below.
            merge = graph.call_function(tome_merge, (x, metric, x, cfg.r[block.index], ctx.spec.num_prefix_tokens))
        with graph.inserting_after(merge):
            tokens = graph.call_function(operator.getitem, (merge, 0))
        with graph.inserting_after(tokens):
            sizes = graph.call_function(operator.getitem, (merge, 1))
        with graph.inserting_after(sizes):
            graph.call_function(operator.getitem, (merge, 2))
        redirect_uses(x, tokens, keep=(merge,))
        merge.meta[TOKEN_OP_KEY] = block.index
        metric.meta["nn_module_stack"] = dict(block.sdpa.meta.get("nn_module_stack", {}))
        merge.meta["nn_module_stack"] = dict(x.meta.get("nn_module_stack", {}))
        inserted.append(block.index)
    if inserted:
        _thread_sizes(gm)
    logger.info(
        "insert_tome_merge: %d ops (blocks %s, r %s)",
        len(inserted),
        inserted,
        [cfg.r[i] for i in inserted] if inserted else [],
    )
    return PassResult(gm, bool(inserted))
