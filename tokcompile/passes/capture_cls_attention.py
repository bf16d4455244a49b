"""capture_cls_attention: add the CLS row of each chosen block's attention, fused attention kept.

Rewrite, for each block in ``ctx.layers``::

    sdpa(q, k, v)                       (unchanged: the block keeps its fused attention)
    + cls_attention_row(q, k)  -> [B, H, N] float32

``cls_attention_row`` is ``softmax(q[:, :, 0] · kᵀ · hd^-0.5)`` (DESIGN.md §3): a [B,H,1,N]
matmul next to the fused kernel instead of materialising the N×N attention. It runs in float32
whatever the model dtype so that precision does not flip selections. The new node carries
``meta["tokcompile.cls_attention"] = block index``; later passes find it there.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.fx as fx

from ..models.tracing import find_blocks
from .manager import PassContext, PassResult

logger = logging.getLogger(__name__)

META_KEY = "tokcompile.cls_attention"


@torch.fx.wrap
def cls_attention_row(q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """q, k: [B, H, N, hd] → post-softmax attention of query 0 (CLS): [B, H, N] float32.

    ``scale`` is the attention call's own (scaled_dot_product_attention's default hd^-0.5 if None).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(q[:, :, :1].float(), k.float().transpose(-2, -1)) * scale
    return logits.softmax(dim=-1).squeeze(2)


def cls_attention_nodes(gm: fx.GraphModule) -> dict[int, fx.Node]:
    return {n.meta[META_KEY]: n for n in gm.graph.nodes if META_KEY in n.meta}


def capture_cls_attention(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    existing = cls_attention_nodes(gm)
    added = 0
    for block in find_blocks(gm):
        if block.index not in ctx.layers or block.index in existing:
            continue
        with gm.graph.inserting_after(block.sdpa):
            node = gm.graph.call_function(cls_attention_row, (block.q, block.k, block.sdpa.kwargs.get("scale")))
        node.meta[META_KEY] = block.index
        node.meta["nn_module_stack"] = dict(block.sdpa.meta.get("nn_module_stack", {}))
        added += 1
    logger.info("capture_cls_attention: %d rows (blocks %s)", added, list(ctx.layers))
    return PassResult(gm, added > 0)
