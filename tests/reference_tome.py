"""Independent eager ToMe forward on a timm ViT (methods-reference.md §2), shared by tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from reference_vit import embed_tokens, heads_qkv


def spec_bipartite(metric: torch.Tensor, r: int, protected: int) -> torch.Tensor:
    """§2.2 matching → [B, N-r, N] assignment (row o sums the tokens that land in output o)."""
    B, N, _ = metric.shape
    r = min(r, (N - protected) // 2)
    eye = torch.eye(N).expand(B, N, N)
    if r <= 0:
        return eye
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
    if protected >= 1:
        scores[:, 0, :] = -math.inf
    if protected >= 2:
        scores[:, :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
    unm, src = edge[:, r:], edge[:, :r]
    if protected >= 1:
        unm = unm.sort(dim=1)[0]
    dst = node_idx[..., None].gather(1, src)
    a, b = eye[:, ::2], eye[:, 1::2]
    merged_b = b.scatter_reduce(1, dst.expand(B, r, N), a.gather(1, src.expand(B, r, N)), reduce="sum")
    a_unm = a.gather(1, unm.expand(B, unm.shape[1], N))
    if protected >= 2:
        return torch.cat([a_unm[:, :1], merged_b[:, :1], a_unm[:, 1:], merged_b[:, 1:]], dim=1)
    return torch.cat([a_unm, merged_b], dim=1)


@torch.no_grad()
def eager_tome(
    model: torch.nn.Module, images: torch.Tensor, schedule: Sequence[int], prop_attn: bool
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """ToMe on a timm ViT, walking its modules by hand (methods-reference.md §2).

    Returns (logits, {block: merge map [B, N0]}): the output position, in that block, of each
    original token. Only blocks with r > 0 merge (and report a map).
    """
    x = embed_tokens(model, images)
    B, N0, _ = x.shape
    protected = model.num_prefix_tokens
    size = None
    where = torch.arange(N0).expand(B, N0)  # position of each original token in x
    maps: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        h = blk.norm1(x)
        B, N, C = h.shape
        q, k, v = heads_qkv(attn, h)
        logits = q @ k.transpose(-2, -1) * attn.scale
        if prop_attn and size is not None:
            logits = logits + size.log()[:, None, None, :, 0]  # proportional attention (§2.2)
        o = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, -1)
        x = x + blk.ls1(attn.proj(attn.norm(o)))
        if schedule[i] > 0:
            if size is None:
                size = torch.ones(B, N, 1)
            assign = spec_bipartite(k.mean(dim=1), schedule[i], protected)  # [B, N-r, N]
            x = (assign @ (x * size)) / (assign @ size)  # merge(x·size) / merge(size)
            size = assign @ size
            where = assign.argmax(dim=1).gather(1, where)
            maps[i] = where
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.forward_head(model.norm(x)), maps
