"""GMACs: attention matmuls counted on every device; DeiT-T/S against a hand count."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from reference_vit import vit_gmacs
from torch.nn.attention import SDPBackend, sdpa_kernel

from tokcompile.models.flops import SDPA_FORMULAS, count_gmacs, flop_counter


@pytest.mark.parametrize(
    "name, dim, expected",
    [("deit_tiny_patch16_224", 192, 1.254), ("deit_small_patch16_224", 384, 4.599)],
)
def test_deit_gmacs_match_the_hand_count(name, dim, expected):
    hand = vit_gmacs(224, 16, dim, 12, 1000)
    assert hand == pytest.approx(expected, abs=5e-4)  # the published figures
    model = timm.create_model(name, pretrained=False).eval()
    assert count_gmacs(model, (3, 224, 224)) == pytest.approx(hand, rel=1e-9)


def test_one_figure_whatever_attention_kernel_runs():
    """The CPU's fused kernel and the math fallback (plain bmm, counted by torch everywhere) agree."""
    model = timm.create_model("test_vit", pretrained=False).eval()
    fused = count_gmacs(model, (3, 160, 160))
    with sdpa_kernel(SDPBackend.MATH):
        math = count_gmacs(model, (3, 160, 160))
    assert fused == math == pytest.approx(vit_gmacs(160, 16, 64, 6, 1000, mlp=3), rel=1e-9)  # test_vit: MLP 3C


def test_cpu_sdpa_kernel_has_a_formula():
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in SDPA_FORMULAS
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    with flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * 2 * 3 * 5 * 7 * (8 + 4)
