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


def vit_gmacs(img: int, patch: int, dim: int, depth: int, classes: int, prefix: int = 1, mlp: int = 4) -> float:
    """Multiply-accumulates of a plain ViT, by hand (N = patches + prefix tokens, C = width):
    patch embedding (a conv: patches × 3·p² × C), per block qkv N·C·3C, QKᵀ N·N·C, AV N·N·C,
    proj N·C·C, fc1 N·C·4C, fc2 N·4C·C, and the head C·classes. LayerNorm, softmax, GELU and
    bias adds are not multiply-accumulates."""
    patches = (img // patch) ** 2
    n = patches + prefix
    embed = patches * 3 * patch * patch * dim
    block = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + 2 * n * dim * mlp * dim
    return (embed + depth * block + dim * classes) / 1e9
