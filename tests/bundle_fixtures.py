"""Bundles built once per session for the runtime, verify and CLI tests.

Weights are the session zoo's (random, attention sharpened so top-k has no float32 near-ties)
saved as safetensors, so every bundle here also exercises ``--weights PATH``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
