"""ops/ats_cls_attention.py: the official eps-softmax CLS row per image, over its real keys only.

The oracle computes each image alone, unpadded, in float64 with the formula of methods-reference
§3.2 as ``tests/reference_ats.py`` writes it (its SOFTMAX_EPS); padded positions hold junk that
must change nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_ats import SOFTMAX_EPS

from tokcompile.ops.ats_cls_attention import ats_cls_attention

ATOL = 1e-6


def reference_row(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """One image, real tokens only: q, k [H, n, hd] → [H, n] CLS row of the eps-softmax, float64."""
    a = (q[:, :1].astype(np.float64) @ k.astype(np.float64).transpose(0, 2, 1))[:, 0] * scale
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    n = a.shape[-1]
    return (e + SOFTMAX_EPS / n) / (e.sum(axis=-1, keepdims=True) + SOFTMAX_EPS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_image_over_its_own_real_tokens(seed: int) -> None:
    B, H, n, hd = 4, 3, 29, 8
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, n, hd, generator=g) * 2, torch.randn(B, H, n, hd, generator=g) * 2
    counts = [n, 17, 2, 1]  # compacted to the front: CLS always real; one image with CLS only
    valid = torch.arange(n)[None, :] < torch.tensor(counts)[:, None]
    q[~valid[:, None, :].expand(B, H, n)] = 1e4  # junk in the padding: must not reach any score
    k[~valid[:, None, :].expand(B, H, n)] = -1e4
    row = ats_cls_attention(q, k, valid)
    assert row.shape == (B, H, n) and row.dtype == torch.float32
    for b, c in enumerate(counts):
        expected = reference_row(q[b, :, :c].numpy(), k[b, :, :c].numpy(), hd**-0.5)
        np.testing.assert_allclose(row[b, :, :c].numpy(), expected, atol=ATOL, rtol=0)
        assert (row[b, :, c:] == 0).all()


def test_half_inputs_score_in_float32_with_the_calls_scale() -> None:
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 2, 11, 8, generator=g).half() for _ in range(2))
    valid = torch.ones(2, 11, dtype=torch.bool)
    row = ats_cls_attention(q, k, valid, 0.2)
    assert row.dtype == torch.float32
    for b in range(2):
        np.testing.assert_allclose(
            row[b].numpy(), reference_row(q[b].float().numpy(), k[b].float().numpy(), 0.2), atol=ATOL
        )


def test_eps_is_spread_over_the_images_own_token_count() -> None:
    """Keys far below the CLS's own score get exactly eps / N: N is each image's real token count,
    not the padded length (a relative check; the absolute values are ~1e-8)."""
    B, H, n, hd = 3, 1, 12, 4
    q = torch.zeros(B, H, n, hd)
    q[:, :, 0, 0] = 1.0
    k = torch.zeros(B, H, n, hd)
    k[:, :, 0, 0] = 400.0  # a = 200 for the CLS key, 0 for every other key: exp(-200) ≈ 1e-87
    counts = [12, 7, 3]
    valid = torch.arange(n)[None, :] < torch.tensor(counts)[:, None]
    row = ats_cls_attention(q, k, valid)
    for b, c in enumerate(counts):
        expected = reference_row(q[b, :, :c].numpy(), k[b, :, :c].numpy(), hd**-0.5)
        np.testing.assert_allclose(row[b, :, :c].numpy(), expected, rtol=1e-5, atol=0)
        np.testing.assert_allclose(row[b, 0, 1:c].numpy(), SOFTMAX_EPS / c / (1 + SOFTMAX_EPS), rtol=1e-5)
