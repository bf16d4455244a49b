"""Padded token tensors with a validity mask: the tensor functions of methods whose token count
becomes per-image (ATS, A-ViT, AdaViT). Tokens are compacted to the front of a tensor that keeps
its length n; ``valid`` [B, n] bool marks the real ones.

fx leaves (``torch.fx.wrap``): passes insert them as ``call_function`` nodes; export traces
them to plain ONNX. Their token dimension stays dynamic in the exported stage files, so they
avoid the ops TensorRT's ONNX parser expands into 10-30 int64 shape layers each (Range, Expand,
dynamically shaped zeros): positions are a cumulative sum, broadcasts are elementwise
(benchmarks/trt_layers.py).
"""

from __future__ import annotations

import torch


@torch.fx.wrap
def all_valid(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, C] → [B, N] all True."""
    return torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)


@torch.fx.wrap
def key_padding_bias(valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """valid: [B, n] bool → additive attention mask [B, 1, 1, n] in ``like``'s dtype: 0 for real
    keys, -inf for padding."""
    return torch.where(valid[:, None, None, :], 0.0, float("-inf")).to(like.dtype)


@torch.fx.wrap
def gather_tokens(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x: [B, n, C], rows: [B, n'] int64 → [B, n', C] with out[b, i] = x[b, rows[b, i]]."""
    return x.gather(1, broadcast_rows(rows, x.shape[-1]))


def broadcast_rows(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """rows [B, n] → [B, n, channels], each row index repeated over the channels (a broadcasting
    add of a constant, not an Expand, in the exported graph)."""
    return rows.unsqueeze(-1) + torch.zeros(1, 1, channels, dtype=rows.dtype, device=rows.device)


@torch.fx.wrap
def valid_prefix(rows: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """rows: [B, n], count: [B] int64 → [B, n] bool: position < count (kept tokens come first)."""
    return positions(rows) < count[:, None]


def positions(like: torch.Tensor) -> torch.Tensor:
    """[B, n] int64 0, 1, ..., n-1 in every row of the integer or bool ``like`` [B, n]: a
    cumulative sum of ones made elementwise (``ones_like`` and ``arange`` over the dynamic n
    export as Expand and Range)."""
    return (like.long() * 0 + 1).cumsum(dim=1) - 1
