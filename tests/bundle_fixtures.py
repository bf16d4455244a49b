"""Bundles built once per session for the runtime, verify and CLI tests.

Weights are the session zoo's (random, attention sharpened so top-k has no float32 near-ties)
saved as safetensors, so every bundle here also exercises ``--weights PATH``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
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
    """``bundle("test_vit", precision="fp32", method="evit", weights=None, **params)`` → path of a
    built bundle (cached: every test asking for the same arguments shares one build). Weights:
    the zoo model's checkpoint unless ``weights`` names a file."""
    cache: dict[tuple, Path] = {}

    def make(name: str, precision: str = "fp32", method: str = "evit", weights: Path | None = None, **params) -> Path:
        weights = weights if weights is not None else checkpoint(name)
        key = (name, precision, method, str(weights), tuple(sorted(params.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("bundle") / f"{name}-{method}-{precision}"
            tokcompile.build(name, method=method, precision=precision, weights=str(weights), output=out, **params)
            cache[key] = out
        return cache[key]

    return make


# The one test_vit bundle per staged method that the suite shares (a staged build exports one
# ONNX file per stage: 15-30 s each on 2 cores, so no test builds another without a reason).
# ATS: three buckets below the sample count; A-ViT: γ, β under which random weights halt tokens
# after a few blocks (the released β=75 halts none); AdaViT: the official-format checkpoint
# below, whose decision heads skip heads, sub-layers and tokens for some images and not others.
ATS_BUCKETS = "40,60,80"
AVIT_GAMMA, AVIT_BETA = 10.0, 3.0
STAGED_PARAMS: dict[str, dict[str, Any]] = {
    "ats": {"buckets": ATS_BUCKETS},
    "avit": {"gamma": AVIT_GAMMA, "beta": AVIT_BETA, "buckets": "32,64"},
    "adavit": {"buckets": "32,64"},
}


@pytest.fixture(scope="session")
def adavit_official(models, tmp_path_factory) -> tuple[torch.nn.Module, dict[str, torch.Tensor], Path]:
    """(zoo test_vit, its official-format AdaViT state, that state's .pth path): the DeiT backbone
    with query/key/value split and decision heads, nested under ``model`` as the official training
    script saves it."""
    from reference_adavit import adavit_state

    model, _ = models("test_vit")
    state = adavit_state(model)
    path = tmp_path_factory.mktemp("adavit") / "ada_test_vit.pth"
    torch.save({"model": state, "epoch": 1}, path)
    return model, state, path


@pytest.fixture(scope="session")
def method_bundle(bundle, adavit_official) -> Callable[..., Path]:
    """``method_bundle("ats", precision="fp32", **extra)`` → the suite's shared test_vit bundle of a
    method (defaults for none/evit/tome, ``STAGED_PARAMS`` for the staged ones), built once."""

    def make(method: str, precision: str = "fp32", **extra: Any) -> Path:
        weights = adavit_official[2] if method == "adavit" else None
        return bundle("test_vit", precision, method, weights=weights, **STAGED_PARAMS.get(method, {}), **extra)

    return make


@pytest.fixture(scope="session")
def calibrated(models) -> Callable[..., tuple[Any, list[Any]]]:
    """``calibrated("ats", buckets="20,30", **params)`` → (``runtime.calibrate.Calibration``, stage
    entries): a build's calibration step on the zoo test_vit (the ``bundle`` fixture's weights)
    without the ONNX export before it. The method's graph as a build makes it (``apply_method``),
    cut into stages as the export cuts it, calibrated on the build's random inputs; the entries
    carry each stage's index, values and count (what calibration reads) and the buckets found."""
    from tokcompile.export.stages import cut_stages
    from tokcompile.manifest import StageEntry
    from tokcompile.methods import apply_method, get_method, resolve_config
    from tokcompile.runtime.calibrate import calibrate, plan_calibration

    def make(method: str, buckets: str | None = None, **params: Any) -> tuple[Any, list[Any]]:
        model, spec = models("test_vit")
        m = get_method(method)
        gm, _ = apply_method(model, spec, m, resolve_config(m, spec, params), "fp32")
        stages, final = cut_stages(gm)
        entries = [
            StageEntry(s.index, f"stage{s.index}.onnx", s.inputs, s.inputs, s.outputs, f"stage{s.index}.onnx", "fp32")
            for s in stages
        ]
        for entry, stage in zip(entries, stages):
            entry.count, entry.token_values = stage.count, stage.token_values
        found = calibrate(plan_calibration(spec, None, buckets, None, None), gm, spec, entries, final)
        for entry in entries:
            entry.buckets = found.buckets.get(entry.index, [])
        return found, entries

    return make


# TensorRT for RTX builds ahead of time for this SM on a machine without a GPU.
RTX_TARGET = 80
RTX_BUCKETS = "40,70"  # staged methods: two bucket profiles + the catch-all per fed stage


@pytest.fixture(scope="session")
def rtx_bundle(bundle) -> Callable[..., Path]:
    """``rtx_bundle(method, precision, **options)`` → a test_vit bundle built with TensorRT for RTX
    for ``RTX_TARGET`` (staged methods with ``RTX_BUCKETS``), built once per session."""

    def make(method: str, precision: str = "fp32", **options: Any) -> Path:
        from tokcompile.methods import get_method

        params = {"buckets": RTX_BUCKETS} if get_method(method).staged else {}
        return bundle(
            "test_vit", precision, method, backend="tensorrt-rtx", target_sm=str(RTX_TARGET), **params, **options
        )

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
