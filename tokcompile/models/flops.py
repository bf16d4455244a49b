"""Multiply-accumulate counts measured on the graph (attention matmuls included).

torch's ``FlopCounterMode`` counts linear, conv and matmul ops, and has formulas for the CUDA
kernels of ``scaled_dot_product_attention`` (flash, efficient, cuDNN) but none for the kernel
the CPU dispatches to (``_scaled_dot_product_flash_attention_for_cpu``, torch 2.3+), nor for the
MPS and "overrideable" (XPU, out-of-tree) variants: on those devices QKᵀ and AV silently counted
zero (DINOv2-S at 224 px: 5.515 instead of 6.124 GMACs). ``SDPA_FORMULAS`` fills them in with the
same count, so a manifest's GMACs are one figure whatever machine builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

# SDPA kernels whose first three arguments are query [B, H, Sq, D], key [B, Hk, Sk, D] and
# value [B, Hk, Sk, Dv]; the ones torch already knows keep torch's formula.
SDPA_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)


def sdpa_flops(
    query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: Any, **kwargs: Any
) -> int:
    """FLOPs of one attention: QKᵀ (B·H·Sq·Sk·D MACs) plus AV (B·H·Sq·Sk·Dv MACs), 2 FLOPs per MAC.

    Query heads H may be a multiple of the key/value heads (grouped-query attention): the
    kernel broadcasts K and V, so the work follows the query heads. Softmax and scaling are not
    multiply-accumulates and count zero, as everywhere else in ``FlopCounterMode``.
    """
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * (d + d_v)


def _missing_formulas() -> dict[Any, Callable[..., int]]:
    mapping: dict[Any, Callable[..., int]] = {}
    for name in SDPA_KERNELS:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            mapping[packet] = sdpa_flops
    return mapping


SDPA_FORMULAS = _missing_formulas()


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter with every SDPA kernel counted (see the module docstring)."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)


def count_gmacs(module: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """GMACs of one image through ``module`` (FLOPs / 2).

    Counts linear/conv/matmul and scaled_dot_product_attention (QKᵀ and AV) on every device, so
    token reduction shows up in every term. Token ops' own gathers are not matmuls and count as zero.
    """
    example = torch.zeros(1, *input_shape, dtype=torch.float32)
    with torch.no_grad(), flop_counter() as counter:
        module(example)
    return counter.get_total_flops() / 2e9


def count_gmacs_staged(runner: Any, images: Any) -> float:
    """Mean GMACs per image of a staged model, each image run alone at its own token counts."""
    totals = []
    for i in range(len(images)):
        with torch.no_grad(), flop_counter() as counter:
            runner.run(images[i : i + 1], exact=True)
        totals.append(counter.get_total_flops() / 2e9)
    return sum(totals) / len(totals)
