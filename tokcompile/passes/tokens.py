"""Graph helpers shared by the passes that insert token ops: finding them and masking the padded
keys of per-image token counts.

The tensor functions these nodes call live in ``ops/`` (``ops/padded_tokens.py``); the metadata
keys in ``names.py``.
"""

from __future__ import annotations

import torch.fx as fx

from ..models.tracing import BlockNodes
from ..ops.padded_tokens import key_padding_bias
from .names import TOKEN_OP_KEY


def token_op_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Token-op call nodes (``meta[TOKEN_OP_KEY]`` = block index) in graph order."""
    return [n for n in gm.graph.nodes if TOKEN_OP_KEY in n.meta]


def mask_padded_keys(graph: fx.Graph, block: BlockNodes, valid: fx.Node) -> None:
    """Give ``block``'s attention (fused SDPA) the additive key mask of ``valid`` [B, n]."""
    with graph.inserting_before(block.sdpa):
        bias = graph.call_function(key_padding_bias, (valid, block.q))
    block.sdpa.kwargs = {**block.sdpa.kwargs, "attn_mask": bias}
