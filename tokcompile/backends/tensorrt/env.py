"""What this machine has: which TensorRT flavour imports, its version, which GPU, and whether a
bundle's engines can run here."""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Optional

from ... import _defaults
from ...manifest import EnginesRecord, Manifest


def gpu_info() -> Optional[dict[str, str]]:
    """``{"name", "compute_capability": "sm_90"}`` of the current CUDA device; None without one.

    torch.cuda when it sees a device, else cuda-python's runtime bindings when importable.
    """
    try:
        import torch

        with warnings.catch_warnings():  # a driver-less machine warns on the first CUDA query
            warnings.simplefilter("ignore")
            if torch.cuda.is_available():
                index = torch.cuda.current_device()
                major, minor = torch.cuda.get_device_capability(index)
                return {"name": torch.cuda.get_device_name(index), "compute_capability": f"sm_{major}{minor}"}
    except Exception:  # a broken CUDA install must not stop the cuda-python fallback
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    ok = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    if err != ok or not count:
        return None
    err, device = cudart.cudaGetDevice()
    if err != ok:
        return None
    err, prop = cudart.cudaGetDeviceProperties(device)
    if err != ok:
        return None
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"sm_{prop.major}{prop.minor}"}


def sm_number(compute_capability: str) -> int:
    """'sm_90' → 90."""
    return int(compute_capability.removeprefix("sm_"))


def import_trt(module: str) -> ModuleType:
    """``import tensorrt`` or ``import tensorrt_rtx`` (raises ImportError without it)."""
    return importlib.import_module(module)


def import_problem(module: str, install: str) -> Optional[str]:
    """None when ``module`` imports; otherwise why not, one line."""
    try:
        import_trt(module)
    except ImportError:
        return f"{module} is not installed ({install})"
    except Exception as exc:  # e.g. the wheel is there but its libraries cannot load
        return f"import {module} failed: {str(exc).strip().splitlines()[0][:160]}"
    return None


def run_problem(module: str, install: str) -> Optional[str]:
    """None when engines of ``module`` can run here: it imports, a CUDA GPU is visible and torch
    can use it (the runner allocates device buffers with torch); otherwise the reason, one line."""
    problem = import_problem(module, install)
    if problem is not None:
        return problem
    if gpu_info() is None:
        return "no CUDA GPU is visible"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} cannot use the GPU (CPU-only build?)"
    return None


def cache_path(kind: str, gpu: Mapping[str, str], tag: str, version: str) -> Path:
    """A per-GPU-model and per-version cache file under TRT_CACHE_DIR (a cache from another GPU or
    version is rejected by TensorRT), e.g. ``timing-nvidia-h100-sm90-trt10.13.0.35.cache``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-") or "gpu"
    sm = gpu["compute_capability"].replace("_", "")
    return Path(_defaults.TRT_CACHE_DIR).expanduser() / f"{kind}-{slug}-{sm}-{tag}{version}.cache"


def recorded_targets(block: EnginesRecord) -> list[int]:
    """The SMs the manifest's ``tensorrt`` record says its engines run on."""
    if block.target_sm:
        return list(block.target_sm)
    cc = block.compute_capability  # bundles from before target_sm: the building GPU
    return [sm_number(cc)] if cc else []


def check_compatible(
    recorded: EnginesRecord, label: str, version: str, compute_capability: str, rebuild: str
) -> Optional[str]:
    """None when engines recorded as ``recorded`` (the manifest's ``tensorrt`` block) run here.

    An engine runs only with the TensorRT version that built it (neither flavour promises more
    by default) and on the compute capabilities it was built for; deserializing it elsewhere
    fails inside TensorRT.
    """
    built_version = recorded.version
    targets = recorded_targets(recorded)
    here = sm_number(compute_capability) if compute_capability.startswith("sm_") else None
    if built_version == version and here in targets:
        return None
    built_for = ", ".join(f"sm_{sm}" for sm in targets) or "an unknown GPU"
    return (
        f"engine built with {label} {built_version} for {built_for}; this machine has {label} {version} on "
        f"{compute_capability}: rebuild the bundle with {rebuild}"
    )


def rebuild_command(manifest: Manifest, directory: Path | str, extra: Sequence[str] = ()) -> str:
    parts = [
        f"tokcompile build {manifest.model.name} --method {manifest.method.name}",
        f"--precision {manifest.precision} --backend {manifest.backend}",
        *extra,
        f"-o {directory} --force",
    ]
    return "'" + " ".join(parts) + "'"
