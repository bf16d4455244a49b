"""Backends (DESIGN.md §1.6): one ``Backend`` protocol (base.py), looked up here by name.

``onnxruntime`` runs the ONNX files (the CPU reference, and the fallback for every bundle);
``tensorrt`` builds engines on the GPU they run on; ``tensorrt-rtx`` builds TensorRT for RTX
engines ahead of time on any machine. ``auto`` picks the first of AUTO that can build here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..errors import TokcompileError
from .base import Backend, BuildOptions

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
REFERENCE = "onnxruntime"  # runs every bundle's ONNX files
# auto: TensorRT where it imports and a GPU is visible, else ONNX Runtime. TensorRT for RTX is not
# in it: its engines run only on the SMs they were built for, so it is chosen with --target-sm.
AUTO = ("tensorrt", "onnxruntime")

_INSTANCES: dict[str, Any] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one of BACKENDS); a one-line error otherwise."""
    if name not in BACKENDS:
        raise TokcompileError(f"--backend must be one of {', '.join(BACKENDS)}, auto, got '{name}'")
    if name not in _INSTANCES:
        if name == REFERENCE:
            from .onnxruntime import OnnxRuntime

            _INSTANCES[name] = OnnxRuntime()
        else:
            from .tensorrt.flavours import TensorRT, TensorRTRtx

            _INSTANCES.update({b.name: b for b in (TensorRT(), TensorRTRtx())})
    return _INSTANCES[name]


def resolve(name: str, options: BuildOptions) -> tuple[Backend, BuildOptions]:
    """``--backend`` NAME (or auto) and its options → the backend to build with and its checked
    options, before anything is built. auto logs which backend it picked and why; an explicit
    backend that cannot build here is a one-line error, as is an option it does not take."""
    if name == "auto":
        reasons: list[str] = []
        for candidate in AUTO:
            backend = get_backend(candidate)
            problem = backend.probe()
            if problem is None:
                logger.info("backend auto: %s%s", backend.label, f", since {'; '.join(reasons)}" if reasons else "")
                # options for a backend auto did not pick (--max-batch, ...) are not an error
                unused = {f: None for f in options.given() if f not in backend.options}
                return backend, backend.check_options(dataclasses.replace(options, **unused))
            reasons.append(problem)
        raise TokcompileError(f"backend auto found no backend that can build here: {'; '.join(reasons)}")
    backend = get_backend(name)
    problem = backend.probe()
    if problem is not None:
        raise TokcompileError(f"--backend {name} needs {backend.needs}: {problem}; use --backend {REFERENCE} (or auto)")
    return backend, backend.check_options(options)
