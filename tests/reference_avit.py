"""Independent A-ViT forward (methods-reference.md §4.2) on a timm ViT, shared by tests.

Written the way the official code computes it: dense, every token in every block, halted tokens
zeroed and masked as attention keys with an additive -1000, the classifier reading the
ponder-weighted CLS. tokcompile removes halted tokens instead (the "zipped" form), so the two
agree only if the pass and the stage runtime are right.
"""

from __future__ import annotations

import torch
from reference_vit import embed_tokens, heads_qkv


@torch.no_grad()
def official_masked_avit(
    model: torch.nn.Module, images: torch.Tensor, gamma: float, beta: float, eps: float = 0.01
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits [B, classes] and, per block, the tokens still running after it ([B, N] bool).

    A token is running while its cumulative halting score c < 1 - eps; the last block halts all.
    """
    x = embed_tokens(model, images)
    B, N, C = x.shape
    c = torch.zeros(B, N)
    R = torch.ones(B, N)
    out = torch.zeros(B, N, C)
    active = torch.ones(B, N)
    depth = len(model.blocks)
    running_after: list[torch.Tensor] = []
    for i, blk in enumerate(model.blocks):
        x = x * active[..., None]
        a = blk.attn
        h_in = blk.norm1(x) * active[..., None]
        q, k, v = heads_qkv(a, h_in)
        logits = q @ k.transpose(-2, -1) * a.scale - 1000.0 * (1 - active)[:, None, None, :]
        y = x + a.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
        y = (y + blk.mlp(blk.norm2(y))) * active[..., None]
        h = torch.sigmoid(gamma * y[:, :, 0] - beta) if i < depth - 1 else torch.ones(B, N)
        c = c + h
        reached = ((c > 1 - eps) & (active > 0)).float()
        running = (c < 1 - eps).float()
        out = out + y * (R * reached + h * running)[..., None]
        R = R - h * running
        active = running
        running_after.append(running > 0)
        x = y
    return model.forward_head(model.norm(out)), running_after
