"""Multiply-accumulate counts measured on the graph (attention matmuls included)."""

from __future__ import annotations

from typing import Any

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


def count_gmacs_staged(runner: Any, images: Any) -> float:
    """Mean GMACs per image of a staged model, each image run alone at its own token counts."""
    totals = []
    for i in range(len(images)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            runner.run(images[i : i + 1], exact=True)
        totals.append(counter.get_total_flops() / 2e9)
    return sum(totals) / len(totals)
