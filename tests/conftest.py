"""Shared fixtures: tiny timm ViTs with random weights and the EViT pipeline applied to them.

Models are built once per session (``create_model`` costs ~2 s for DeiT-T on 2 CPU cores);
every test that rewrites a graph captures a fresh GraphModule from them, so passes never see
another test's rewrite.

Run from the repository root with ``python -m pytest tests`` (the package is imported from the
working tree).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.fx as fx
from pass_helpers import method_graph

from tokcompile.models import ModelSpec, create_model
from tokcompile.passes.manager import PassContext

SEED = 0
# Scale of the q and k rows of every qkv projection. timm's random init (std 0.02) gives
# near-uniform attention: DeiT-T's CLS scores then all lie within ~1e-3 of 1/197, with adjacent
# sorted scores 2e-9 apart, i.e. a few float32 ulps, so top-k order would hinge on rounding.
# Scaling q and k by 4 (attention logits by 16) spreads the scores over 3e-4..6e-2 and gives a
# minimum gap of ~1e-7 (tens of ulps); the models stay ordinary timm ViTs.
QK_SHARPEN = 4.0


def _sharpen_attention(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for blk in model.blocks:
            qkv = blk.attn.qkv
            dim = qkv.in_features  # rows [0, C) are q, [C, 2C) are k
            qkv.weight[: 2 * dim] *= QK_SHARPEN
            if qkv.bias is not None:
                qkv.bias[: 2 * dim] *= QK_SHARPEN


class ModelZoo:
    """Session cache of (model, spec) by tokcompile/timm name."""

    def __init__(self) -> None:
        self._models: dict[str, tuple[torch.nn.Module, ModelSpec]] = {}

    def __call__(self, name: str) -> tuple[torch.nn.Module, ModelSpec]:
        if name not in self._models:
            torch.manual_seed(SEED)
            model, spec, _, _ = create_model(name, weights="random", seed=SEED)
            _sharpen_attention(model)
            self._models[name] = (model, spec)
        return self._models[name]


@pytest.fixture(scope="session")
def models() -> ModelZoo:
    """``models("test_vit")`` → (eval timm model with random weights, ModelSpec), cached."""
    return ModelZoo()


@pytest.fixture(scope="session")
def test_vit(models: ModelZoo) -> tuple[torch.nn.Module, ModelSpec]:
    """timm ``test_vit``: 6 blocks, embed 64, 2 heads, 160×160 input, 100 patches + CLS."""
    model, spec = models("test_vit")
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.img_size, spec.num_tokens) == (6, 64, 2, (160, 160), 101)
    return model, spec


@pytest.fixture(scope="session")
def deit_tiny(models: ModelZoo) -> tuple[torch.nn.Module, ModelSpec]:
    """DeiT-Tiny: 12 blocks, embed 192, 3 heads, 224×224 input, 196 patches + CLS."""
    model, spec = models("deit_t")
    assert (spec.depth, spec.embed_dim, spec.num_heads, spec.num_tokens) == (12, 192, 3, 197)
    return model, spec


@pytest.fixture(scope="session")
def evit_gm(models: ModelZoo) -> Callable[..., tuple[fx.GraphModule, PassContext]]:
    """``evit_gm("deit_t", keep_rate=0.7, fuse=True)`` → (rewritten GraphModule, PassContext):
    ``pass_helpers.method_graph`` for EViT (debug linting, ``ctx.info["modified"]`` set)."""

    def make(name: str, **params: Any) -> tuple[fx.GraphModule, PassContext]:
        return method_graph(models, "evit", name, **params)

    return make


def _token_sequence(num_tokens: int, num_prefix: int, keep_rate: float, fuse: bool, num_layers: int) -> list[int]:
    """Token counts [N, after layer 1, ...], computed independently of tokcompile (§1.2)."""
    seq = [num_tokens]
    for _ in range(num_layers):
        n = seq[-1]
        k = math.ceil(keep_rate * (n - num_prefix))  # Python float64
        seq.append(n if k >= n - num_prefix else num_prefix + k + int(fuse))
    return seq


@pytest.fixture(scope="session")
def token_sequence() -> Callable[..., list[int]]:
    """``token_sequence(N, P, keep_rate, fuse, num_layers)`` → expected counts, independent of tokcompile."""
    return _token_sequence


@pytest.fixture
def images() -> Callable[[ModelSpec, int], torch.Tensor]:
    """``images(spec, batch)`` → seeded random float32 images [batch, 3, H, W]."""

    def make(spec: ModelSpec, batch: int, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *spec.input_shape, generator=gen)

    return make


pytest_plugins = ["bundle_fixtures"]
