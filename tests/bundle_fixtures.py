"""Bundles built once per session for the runtime, verify and CLI tests.

Weights are the session zoo's (random, attention sharpened so top-k has no float32 near-ties)
saved as safetensors, so every bundle here also exercises ``--weights PATH``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

import tokcompile


@pytest.fixture(scope="session")
def checkpoint(models, tmp_path_factory) -> Callable[[str], Path]:
    """``checkpoint("test_vit")`` → path of a .safetensors state dict of the zoo model."""
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            model, _ = models(name)
            path = tmp_path_factory.mktemp("ckpt") / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
            cache[name] = path
        return cache[name]

    return make


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Callable[..., Path]:
    """``bundle("test_vit", precision="fp32", method="evit", **params)`` → path of a built bundle (cached)."""
    cache: dict[tuple, Path] = {}

    def make(name: str, precision: str = "fp32", method: str = "evit", **params) -> Path:
        key = (name, precision, method, tuple(sorted(params.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("bundle") / f"{name}-{method}-{precision}"
            tokcompile.build(
                name, method=method, precision=precision, weights=str(checkpoint(name)), output=out, **params
            )
            cache[key] = out
        return cache[key]

    return make


# A test-size DINOv2 ViT: timm's DINOv2-S/14 configuration (patch 14, LayerScale, no classifier,
# pretrained config 518 px with crop_pct 1.0) at 98 px (7 × 7 patches + CLS = 50 tokens), 4
# blocks, width 64: every image path must preprocess at 98 px, not at the pretrained 518.
DINOV2 = "vit_small_patch14_dinov2"
DINOV2_KWARGS = {"img_size": 98, "depth": 4, "embed_dim": 64, "num_heads": 2}
DINOV2_ARGS = (
    "--img-size",
    "98",
    "--model-arg",
    "depth=4",
    "--model-arg",
    "embed_dim=64",
    "--model-arg",
    "num_heads=2",
)


@pytest.fixture(scope="session")
def dinov2_checkpoint(tmp_path_factory) -> Path:
    """The DINOv2-style model's weights (random; q/k ×4 as the zoo's; LayerScale 0.1 instead of
    timm's 1e-5 init, so blocks move the tokens as trained ones do) as safetensors."""
    import torch

    from tokcompile.models import create_model

    model, _, _, _ = create_model(DINOV2, weights="random", seed=0, **DINOV2_KWARGS)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * blk.attn.qkv.in_features] *= 4.0
            blk.ls1.gamma.fill_(0.1)
            blk.ls2.gamma.fill_(0.1)
    path = tmp_path_factory.mktemp("ckpt") / "dinov2_test.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Six labelled RGB pictures of different sizes and aspect ratios (smooth gradients plus noise,
    so crops and resizes change them), as PNG and JPEG."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    sizes = [(200, 150), (150, 260), (120, 120), (333, 250), (90, 140), (256, 256)]
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"n0144076{i % 2}_{i}.{'png' if i % 2 else 'jpg'}")
    return folder


@pytest.fixture(scope="session")
def dinov2_bundle(dinov2_checkpoint, tmp_path_factory) -> Callable[..., Path]:
    """``dinov2_bundle(method="evit", precision="fp32", **params)`` → a built bundle of the DINOv2-style model."""
    cache: dict[tuple, Path] = {}

    def make(method: str = "evit", precision: str = "fp32", **params) -> Path:
        key = (method, precision, tuple(sorted(params.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("bundle") / f"dinov2-{method}-{precision}"
            tokcompile.build(
                DINOV2,
                method=method,
                precision=precision,
                weights=str(dinov2_checkpoint),
                output=out,
                model_kwargs=DINOV2_KWARGS,
                **params,
            )
            cache[key] = out
        return cache[key]

    return make
