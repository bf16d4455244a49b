"""ops/tome_metric.py and ops/proportional_attention.py: ToMe's metric, sizes and size bias.

Oracles: the metric as numpy's float64 mean over heads; the bias through what it is for
(methods-reference §2.2): fused attention with the bias equals the explicit float64
softmax(q·kᵀ·scale + log(size)[key]) @ v, as ``tests/reference_tome.py`` computes it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokcompile.ops.proportional_attention import size_attention_bias
from tokcompile.ops.tome_metric import token_sizes, tome_metric


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_metric_is_the_keys_averaged_over_heads(dtype) -> None:
    k = torch.randn(2, 3, 17, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    metric = tome_metric(k)
    assert metric.shape == (2, 17, 8) and metric.dtype == torch.float32
    np.testing.assert_allclose(metric.numpy(), k.double().numpy().mean(axis=1), atol=1e-6, rtol=0)


def test_sizes_start_at_one_per_token() -> None:
    x = torch.randn(3, 11, 5).half()
    sizes = token_sizes(x)
    assert sizes.shape == (3, 11, 1) and sizes.dtype == torch.float32 and (sizes == 1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bias_gives_proportional_attention(dtype) -> None:
    g = torch.Generator().manual_seed(1)
    B, H, N, hd = 2, 3, 13, 8
    q, k, v = (torch.randn(B, H, N, hd, generator=g) for _ in range(3))
    size = torch.randint(1, 6, (B, N, 1), generator=g).float()
    bias = size_attention_bias(size, q.to(dtype))
    assert bias.shape == (B, 1, 1, N) and bias.dtype == dtype
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.float())
    logits = q.double() @ k.double().transpose(-2, -1) * hd**-0.5 + size.double().log()[:, None, None, :, 0]
    expected = logits.softmax(dim=-1) @ v.double()
    atol = 1e-6 if dtype is torch.float32 else 1e-3  # the bias rounded to fp16
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=0)


def test_unit_sizes_give_no_bias() -> None:
    assert (size_attention_bias(torch.ones(2, 5, 1), torch.zeros(2, 1, 5, 4)) == 0).all()
