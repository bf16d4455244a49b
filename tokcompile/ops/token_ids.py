"""Original-token bookkeeping: which tokens of the network's input sequence a layer's tokens are.

The graph outputs ``kept_ids_<block>`` and ``merge_map_<block>`` (passes/names.py) are made of
these, so two runs can be compared layer by layer even when an earlier layer ordered tokens
differently. fx leaves (``torch.fx.wrap``), traced to plain ONNX at export.
"""

from __future__ import annotations

import torch


@torch.fx.wrap
def initial_ids(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, C] → [[0, 1, ..., N-1]] * B (int64): original token ids."""
    return torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], x.shape[1])


@torch.fx.wrap
def sampled_ids(ids: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ids: [B, n] of a layer's input, rows: [B, n'] picked rows, valid: [B, n'] bool →
    [B, n'] original ids of the picked tokens, -1 on padding."""
    return torch.where(valid, ids.gather(1, rows), -1)


@torch.fx.wrap
def gather_token_ids(
    ids: torch.Tensor, kept_pos: torch.Tensor, out: torch.Tensor, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids: [B, N] ids of a token op's input; kept_pos: [B, k] positions it kept; out: [B, N', C]
    its tokens; num_prefix: P prefix tokens, kept first.

    Returns (ids of out [B, N'], ids of the kept tokens [B, k]); extra tokens an op appends
    after the kept ones (EViT's fused token) get id -1.
    """
    kept = ids.gather(1, kept_pos)
    extra = out.shape[1] - num_prefix - kept_pos.shape[1]
    parts = [ids[:, :num_prefix], kept]
    if extra > 0:
        parts.append(torch.full_like(ids[:, :extra], -1))
    return torch.cat(parts, dim=1), kept


@torch.fx.wrap
def compose_merge_map(previous: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
    """previous: [B, N0] positions of the original tokens in a merge's input; dest: [B, N] the
    merge's output position of each input token → [B, N0] positions in its output."""
    return dest.gather(1, previous)
