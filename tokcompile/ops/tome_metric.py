"""ToMe's matching metric and token sizes (methods-reference.md §2.1), the inputs of ``tome_merge``.

Contract::

    tome_metric(k):   k [B, H, N, hd] the block's SDPA key input (after k_norm)
                      → [B, N, hd] float32, the keys averaged over heads
    token_sizes(x):   x [B, N, C] the tokens entering the first merge
                      → ones [B, N, 1] float32: every token stands for one patch before any merge

fx leaves (``torch.fx.wrap``) that ``insert_tome_merge`` inserts; export traces them to plain ONNX.
"""

from __future__ import annotations

import torch


@torch.fx.wrap
def tome_metric(k: torch.Tensor) -> torch.Tensor:
    """k: [B, H, N, hd] → ToMe's matching metric, the keys averaged over heads: [B, N, hd] float32."""
    return k.float().mean(dim=1)


@torch.fx.wrap
def token_sizes(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, C] → ones [B, N, 1] float32: every token stands for one patch before any merge."""
    return torch.ones(x.shape[0], x.shape[1], 1, dtype=torch.float32, device=x.device)
