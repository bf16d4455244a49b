"""The CLS row of a block's attention, next to its fused attention (DESIGN.md §3).

Contract::

    q, k:   [B, H, N, hd]   the block's scaled_dot_product_attention inputs (any float dtype)
    scale:  the attention's own scale (None: SDPA's default hd^-0.5)
    returns [B, H, N] float32: softmax(q[:, :, 0] · kᵀ · scale), the post-softmax attention of
            query 0 (CLS) over every key

A [B, H, 1, N] matmul instead of materialising the N×N attention, in float32 whatever the model
dtype so that precision does not flip selections (EViT's scoring, methods-reference.md §1.2).
An fx leaf (``torch.fx.wrap``) that ``capture_cls_attention`` inserts; export traces it to plain
ONNX.
"""

from __future__ import annotations

from typing import Optional

import torch


@torch.fx.wrap
def cls_attention_row(q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """q, k: [B, H, N, hd] → post-softmax attention of query 0 (CLS): [B, H, N] float32."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(q[:, :, :1].float(), k.float().transpose(-2, -1)) * scale
    return logits.softmax(dim=-1).squeeze(2)
