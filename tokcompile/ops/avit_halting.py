"""A-ViT's adaptive halting (methods-reference.md §4.2), as tensor functions on padded tokens.

Contract, per block l with output y [B, n, C] (n may include padding, ``valid`` [B, n] bool)::

    avit_init(y)      → c [B, n] = 0, R [B] = 1, out [B, C] = 0, done [B] = False   (float32 state)
    avit_update(y, c, R, out, done, valid, γ, β, threshold = 1 − ε, last)
                      → (c, R, out, done, keep [B, n] bool):
        h      = sigmoid(γ·y[:, :, 0] − β)               (h = 1 in the last block)
        c     += h on real tokens                         (cumulative halting score)
        CLS:   out += y_cls·(R if c_cls ≥ threshold else h);  R −= h while running;
               done once c_cls ≥ threshold
        keep   = c < threshold on real tokens of images not done, and CLS always
    gather_c(c, rows) → c[b, rows[b]]                     (the scores follow the compacted tokens)
    ponder_tokens(out, like) → out as a one-token sequence [B, 1, C] in like's dtype

All halting arithmetic runs in float32. fx leaves (``torch.fx.wrap``) that
``insert_avit_halting`` inserts; export traces them to plain ONNX.
"""

from __future__ import annotations

import torch

from .padded_tokens import positions


@torch.fx.wrap
def avit_init(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """State before block 0: c [B, n] = 0, R [B] = 1, out [B, C] = 0, done [B] = False (float32)."""
    B, n, C = x.shape
    zeros = torch.zeros(B, n, dtype=torch.float32, device=x.device)
    return zeros, zeros[:, 0] + 1.0, torch.zeros(B, C, dtype=torch.float32, device=x.device), zeros[:, 0] > 0


@torch.fx.wrap
def avit_update(
    y: torch.Tensor,
    c: torch.Tensor,
    remainder: torch.Tensor,
    out: torch.Tensor,
    done: torch.Tensor,
    valid: torch.Tensor,
    gamma: float,
    beta: float,
    threshold: float,
    last: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One halting step (float32), see the module contract. Returns (c, R, out, done, keep [B, n] bool)."""
    h = torch.sigmoid(gamma * y[:, :, 0].float() - beta)
    if last:
        h = torch.ones_like(h)
    c = torch.where(valid, c + h, c)
    h_cls, c_cls, y_cls = h[:, 0], c[:, 0], y[:, 0].float()
    reached = (c_cls > threshold) & ~done
    running = (c_cls < threshold) & ~done
    weight = torch.where(reached, remainder, torch.where(running, h_cls, torch.zeros_like(h_cls)))
    out = out + y_cls * weight[:, None]
    remainder = torch.where(running, remainder - h_cls, remainder)
    done = done | ~running
    cls = positions(valid) == 0
    keep = ((c < threshold) & valid & ~done[:, None]) | cls  # CLS stays; a halted image keeps only it
    return c, remainder, out, done, keep


@torch.fx.wrap
def ponder_tokens(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """out: [B, C] float32 → the ponder-weighted CLS as a one-token sequence [B, 1, C] in like's
    dtype, for the final norm and pooling."""
    return out[:, None, :].to(like.dtype)


@torch.fx.wrap
def gather_c(c: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """c: [B, n] halting scores, rows: [B, n'] int64 → [B, n'] c[b, rows[b]]."""
    return c.gather(1, rows)
