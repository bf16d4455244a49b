"""ATS's CLS attention row: the official eps-softmax over the image's real keys (methods-reference
§3.2, the official ``softmax_with_policy``).

Contract::

    q, k:   [B, H, n, hd]   the block's SDPA inputs; n may include padded positions
    valid:  [B, n] bool     real tokens (padding False)
    scale:  the attention's own scale (None: hd^-0.5)
    returns [B, H, n] float32, per image with N = its own count of real tokens:
            (exp(a - max) + eps/N) / (Σ exp + eps),  a = q[:, :, 0] · kᵀ · scale over real keys;
            0 at padded keys

In float32 whatever the model dtype. An fx leaf (``torch.fx.wrap``) that ``insert_ats_sample``
inserts; export traces it to plain ONNX.
"""

from __future__ import annotations

from typing import Optional

import torch

SOFTMAX_EPS = 1e-6  # the official softmax_with_policy's eps (§3.2)


@torch.fx.wrap
def ats_cls_attention(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """CLS row of the eps-softmax over each image's real keys: [B, H, n] float32, padded keys 0."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # q[:, :, 0] as a select (one Gather), not a Slice of the dynamic token axis
    logits = (
        torch.matmul(q.select(2, 0).unsqueeze(2).float(), k.float().transpose(-2, -1)).squeeze(2) * scale
    )  # [B, H, n]
    keys = valid[:, None, :]
    logits = logits.masked_fill(~keys, float("-inf"))
    e = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    count = valid.sum(dim=-1, keepdim=True).unsqueeze(1).float()  # [B, 1, 1]
    return torch.where(keys, (e + SOFTMAX_EPS / count) / (e.sum(-1, keepdim=True) + SOFTMAX_EPS), 0.0)
