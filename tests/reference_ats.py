"""Independent per-image ATS (methods-reference.md §3.2) on a timm ViT, shared by tests.

``section_3_2_one`` is §3.2 as written, in float64, for one unpadded image, including the official
left-padding of the normalised CDF with zeros to length M (which tokcompile does not reproduce: it
checks that the padding never wins the argmin); it shares no code with ``tokcompile.ops.ats_sample``.
``eager_ats`` runs one image through a timm ViT with ATS in the given blocks, the way the official
code does at batch 1: every attention is the official eps-softmax, sampled blocks keep the rows
of the sampled tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from reference_vit import embed_tokens, heads_qkv

SOFTMAX_EPS = 1e-6  # the official softmax_with_policy: (exp(a - max) + eps/N) / (Σ exp + eps)


def section_3_2_one(attn: np.ndarray, v: np.ndarray, M: int, official_y: bool = False) -> np.ndarray:
    """§3.2 in float64 for one unpadded, non-degenerate image, with the official left padding."""
    s = attn[:, 1:].astype(np.float64).sum(axis=0) * np.sqrt((v[:, 1:].astype(np.float64) ** 2).sum(axis=(0, 2)))
    s = s / s.sum()
    m = s.shape[0]
    order = np.argsort(s, kind="stable")
    cdf = np.cumsum(s[order])
    cdfn = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    assert cdfn[0] == 0
    y0 = cdfn[cdfn > 0].min()
    i = np.arange(M, dtype=np.float64)
    if official_y:  # official arithmetic: y0 + (lin_i*(M-1) - y0*i)/(M-1), lin = linspace(0, 1, M)
        lin = np.linspace(0, 1, M)
        y = y0 + (lin * (M - 1) - y0 * i) / (M - 1)
    else:
        y = y0 + (1 - y0) * i / max(M - 1, 1)
    assert y.min() >= y0 > 0
    # Official: left-pad with zeros to length M, argmin (first index on ties), subtract the pad.
    pad = max(M - m, 0)
    cdfp = np.concatenate([np.zeros(pad), cdfn])
    raw = np.abs(y[:, None] - cdfp[None, :]).argmin(axis=1)
    assert (raw >= pad).all(), "a zero of the official left padding won the argmin"
    keep = np.unique(raw - pad)
    return np.concatenate([[0], order[keep] + 1])


@torch.no_grad()
def eager_ats(
    model: torch.nn.Module, image: torch.Tensor, budgets: Mapping[int, int]
) -> tuple[torch.Tensor, dict[int, np.ndarray]]:
    """One image [1, 3, H, W] through ``model`` with ATS in the blocks of ``budgets`` (block → K).

    Returns (logits [1, classes], {block: original token ids after sampling, CLS first}).
    M = K - 1 samples (K = the network's token count is the official M = n_ref - 1).
    """
    x = embed_tokens(model, image)
    ids = np.arange(x.shape[1])
    kept: dict[int, np.ndarray] = {}
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        h = blk.norm1(x)
        _, n, _ = h.shape
        q, k, v = heads_qkv(attn, h)
        logits = q @ k.transpose(-2, -1) * attn.scale
        e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
        A = (e + SOFTMAX_EPS / n) / (e.sum(dim=-1, keepdim=True) + SOFTMAX_EPS)  # [1, H, n, n]
        o = (A @ v).transpose(1, 2).reshape(1, n, -1)
        x = x + blk.ls1(attn.proj(attn.norm(o)))
        if i in budgets:  # rows of A picked before A @ V == rows of x + proj(A @ V): proj is row-wise
            rows = section_3_2_one(A[0, :, 0].numpy(), v[0].numpy(), budgets[i] - 1)
            x, ids = x[:, torch.from_numpy(rows)], ids[rows]
            kept[i] = ids
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.forward_head(model.norm(x)), kept
