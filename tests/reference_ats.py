"""Independent per-image ATS (methods-reference.md §3.2) on a timm ViT, shared by tests.

``spec_scores`` / ``spec_one`` are a numpy transcription of the §3.2 formulas for one unpadded
image, including the official left-padding of the normalised CDF with zeros to length M (which
tokcompile does not reproduce: ``spec_one`` checks that the padding never wins the argmin). They
follow the rounding policy of the op's contract (reductions in float64, rounded once to float32;
everything else float32) and share no code with ``tokcompile.ops.ats_sample``.
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


def spec_scores(attn: np.ndarray, v: np.ndarray) -> np.ndarray:
    """s_j, j = 1..n-1 of one unpadded image (attn [H, n], v [H, n, hd]), normalised."""
    head = attn[:, 1:].astype(np.float64).sum(axis=0).astype(np.float32)
    v_norm = np.sqrt((v[:, 1:].astype(np.float64) ** 2).sum(axis=(0, 2))).astype(np.float32)
    s = head * v_norm
    return s / np.float32(s.astype(np.float64).sum())


def spec_one(attn: np.ndarray, v: np.ndarray, M: int, official_y: bool = False) -> np.ndarray:
    """§3.2 for one unpadded, non-degenerate image → rows [count] (CLS, kept by ascending score)."""
    s = spec_scores(attn, v)
    m = s.shape[0]
    order = np.argsort(s, kind="stable")
    cdf = np.cumsum(s[order].astype(np.float64)).astype(np.float32)
    cdfn = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    assert cdfn[0] == 0
    y0 = cdfn[cdfn > 0].min()
    if official_y:  # official arithmetic: y0 + (lin_i*(M-1) - y0*i)/(M-1), lin = linspace(0, 1, M)
        lin = torch.linspace(0, 1, M).numpy()
        i = np.arange(M, dtype=np.float32)
        y = y0 + (lin * np.float32(M - 1) - y0 * i) / np.float32(M - 1)
    else:
        t = (np.arange(M, dtype=np.float64) / max(M - 1, 1)).astype(np.float32)
        y = y0 + (np.float32(1) - y0) * t
    assert y.dtype == np.float32 and y.min() >= y0 > 0
    # Official: left-pad with zeros to length M, argmin (first index on ties), subtract the pad.
    pad = max(M - m, 0)
    cdfp = np.concatenate([np.zeros(pad, dtype=np.float32), cdfn])
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
            rows = spec_one(A[0, :, 0].numpy(), v[0].numpy(), budgets[i] - 1)
            x, ids = x[:, torch.from_numpy(rows)], ids[rows]
            kept[i] = ids
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.forward_head(model.norm(x)), kept
