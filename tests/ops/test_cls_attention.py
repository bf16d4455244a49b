"""ops/cls_attention.py: the CLS row of the attention, against the full softmax attention matrix
computed in float64 (the N×N matrix the op avoids), shared with no tokcompile code."""

from __future__ import annotations

import pytest
import torch

from tokcompile.ops.cls_attention import cls_attention_row

ATOL = 1e-6  # float32 softmax of a [B, H, 1, N] row vs float64


def qk(B: int = 3, H: int = 4, N: int = 37, hd: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, N, hd, generator=g) * 2, torch.randn(B, H, N, hd, generator=g) * 2


def full_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q · kᵀ · scale) over every query, float64: [B, H, N, N]."""
    return (q.double() @ k.double().transpose(-2, -1) * scale).softmax(dim=-1)


@pytest.mark.parametrize("scale", [None, 0.1])
def test_row_is_query_0_of_the_full_attention(scale) -> None:
    q, k = qk()
    row = cls_attention_row(q, k, scale)
    assert row.shape == (3, 4, 37) and row.dtype == torch.float32
    expected = full_attention(q, k, q.shape[-1] ** -0.5 if scale is None else scale)[:, :, 0]
    torch.testing.assert_close(row.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scores_in_float32_for_half_inputs(dtype) -> None:
    """The row of half-precision q, k is float32 and equals the float64 row of the same (rounded) values."""
    q, k = (t.to(dtype) for t in qk(seed=1))
    row = cls_attention_row(q, k)
    assert row.dtype == torch.float32
    torch.testing.assert_close(row.double(), full_attention(q, k, q.shape[-1] ** -0.5)[:, :, 0], atol=ATOL, rtol=0)
