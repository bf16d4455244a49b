"""capture_cls_attention: add the CLS row of each chosen block's attention, fused attention kept.

Rewrite, for each block in ``ctx.layers``::

    sdpa(q, k, v)                       (unchanged: the block keeps its fused attention)
    + cls_attention_row(q, k)  -> [B, H, N] float32

``cls_attention_row`` (``ops/cls_attention.py``) is ``softmax(q[:, :, 0] · kᵀ · scale)`` in float32
(DESIGN.md §3): a [B,H,1,N] matmul next to the fused kernel instead of materialising the N×N
attention. The new node carries ``meta[CLS_ATTENTION_KEY] = block index`` (``names.py``); later
passes find it there.
"""

from __future__ import annotations

import logging

import torch.fx as fx

from ..models.tracing import find_blocks
from ..ops.cls_attention import cls_attention_row
from .manager import PassContext, PassResult
from .names import CLS_ATTENTION_KEY

logger = logging.getLogger(__name__)


def cls_attention_nodes(gm: fx.GraphModule) -> dict[int, fx.Node]:
    """Block index → its ``cls_attention_row`` node."""
    return {n.meta[CLS_ATTENTION_KEY]: n for n in gm.graph.nodes if CLS_ATTENTION_KEY in n.meta}


def capture_cls_attention(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    existing = cls_attention_nodes(gm)
    added = 0
    for block in find_blocks(gm):
        if block.index not in ctx.layers or block.index in existing:
            continue
        with gm.graph.inserting_after(block.sdpa):
            node = gm.graph.call_function(cls_attention_row, (block.q, block.k, block.sdpa.kwargs.get("scale")))
        node.meta[CLS_ATTENTION_KEY] = block.index
        node.meta["nn_module_stack"] = dict(block.sdpa.meta.get("nn_module_stack", {}))
        added += 1
    logger.info("capture_cls_attention: %d rows (blocks %s)", added, list(ctx.layers))
    return PassResult(gm, added > 0)
