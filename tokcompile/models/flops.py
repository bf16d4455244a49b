"""Multiply-accumulate counts measured on the graph (attention matmuls included)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_gmacs(module: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """GMACs of one image through ``module`` (FLOPs / 2), counted by torch's FlopCounterMode.

    Counts linear/conv/matmul and scaled_dot_product_attention (QKᵀ and AV), so token reduction
    shows up in every term. Token ops' own gathers are not matmuls and count as zero.
    """
    example = torch.zeros(1, *input_shape, dtype=torch.float32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return counter.get_total_flops() / 2e9
