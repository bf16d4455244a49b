"""ToMe's proportional attention as an additive key bias (methods-reference.md §2.2).

Contract::

    size:   [B, N, 1] float32   how many patches each token stands for (``tome_merge``'s sizes)
    q:      [B, H, N, hd]       the attention's query (only its dtype is read)
    returns [B, 1, 1, N] in q's dtype: log(size) per key, the same for every head and query,
            i.e. softmax(q·kᵀ·scale + log(size)[key])

An fx leaf (``torch.fx.wrap``) that ``add_proportional_attention`` passes to the block's fused
``scaled_dot_product_attention`` as ``attn_mask``; export traces it to plain ONNX.
"""

from __future__ import annotations

import torch


@torch.fx.wrap
def size_attention_bias(size: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """size: [B, N, 1] float32 token sizes → log(size) as an additive key bias [B, 1, 1, N] in q's dtype."""
    # detach: sizes are counts without a gradient, and a mask that requires grad makes the ONNX
    # exporter's re-trace pick another CPU SDPA kernel (other output strides) than torch.export
    # did, which then fails on timm's transpose+reshape (torch 2.15).
    return size.detach().float().log().transpose(1, 2).unsqueeze(1).to(q.dtype)
