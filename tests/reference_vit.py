"""The pieces of a timm ViT forward that the hand-written method references share."""

from __future__ import annotations

import torch


def embed_tokens(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images → the token sequence the first block reads, [B, N, C] (prefix tokens first)."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))


def heads_qkv(attn: torch.nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm Attention's q, k, v per head, [B, H, N, hd] each, with its q/k norms applied."""
    B, N, _ = h.shape
    q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v
