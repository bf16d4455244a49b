"""annotate_tokens: record per-block token counts (no rewrite).

Propagates a fake [1, 3, H, W] input through the graph (fake kernels only, no real compute) and
stores, in ``ctx.info["tokens"]``, for every block the tokens its attention and its MLP see,
plus the sequence of counts after each token op ("197 → 140 → 100 → 72"). Each SDPA node also
gets ``meta[TOKENS_KEY]`` (``names.py``).
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from ..models.tracing import find_blocks
from .manager import PassContext, PassResult
from .names import TOKEN_OP_KEY, TOKENS_KEY
from .tokens import token_op_nodes

logger = logging.getLogger(__name__)


def _tokens(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)):
        meta = meta[0]
    if meta is None:
        raise RuntimeError(f"node {node.name} has no shape (run ShapeProp before annotate_tokens)")
    return int(meta.shape[1])


def annotate_tokens(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        example = torch.empty(1, *ctx.spec.input_shape)
    ShapeProp(gm, fake_mode=mode).propagate(example)
    ops = {n.meta[TOKEN_OP_KEY]: n for n in token_op_nodes(gm)}
    blocks = []
    for block in find_blocks(gm):
        attn_tokens = int(block.sdpa.meta["tensor_meta"].shape[2])
        mlp_tokens = _tokens(ops[block.index]) if block.index in ops else attn_tokens
        block.sdpa.meta[TOKENS_KEY] = attn_tokens
        blocks.append({"block": block.index, "attention": attn_tokens, "mlp": mlp_tokens})
    sequence = [blocks[0]["attention"]] + [b["mlp"] for b in blocks if b["block"] in ops]
    ctx.info["tokens"] = {"blocks": blocks, "sequence": sequence}
    logger.info("annotate_tokens: tokens %s", " → ".join(map(str, sequence)))
    return PassResult(gm, False)
