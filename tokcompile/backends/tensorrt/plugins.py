"""The TensorRT plugin library (plugins/, built with cmake): where it is, and loading it once."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Optional

from ... import _defaults
from ...errors import TokcompileError
from .env import import_trt

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]


def resolve_plugin_lib(path: Optional[str | Path]) -> Optional[Path]:
    """``--plugin-lib`` PATH, else $TOKCOMPILE_PLUGIN_LIB, else build/<PLUGIN_LIBRARY> in the repository
    when it exists, else None. A path that is named but missing is a one-line error."""
    if path is not None:
        lib = Path(path)
        if not lib.is_file():
            raise TokcompileError(
                f"--plugin-lib '{lib}' is not a file; build the plugins with cmake (README: TensorRT)"
            )
        return lib
    env = os.environ.get(_defaults.PLUGIN_LIB_ENV)
    if env:
        lib = Path(env)
        if not lib.is_file():
            raise TokcompileError(f"${_defaults.PLUGIN_LIB_ENV}='{env}' is not a file; fix or unset it")
        return lib
    lib = REPO_ROOT / "build" / _defaults.PLUGIN_LIBRARY
    return lib if lib.is_file() else None


_LOADED: dict[str, Path] = {}  # sha256 → path: a library registers its creators once per process


def load_plugin_library(path: Path, module: str) -> str:
    """Load a self-registering plugin library (RTLD_GLOBAL) once per content; returns its sha256.

    ``module``: the TensorRT flavour whose plugin registry the library registers with; it is
    imported first so that its libnvinfer is loaded. A copy of an already loaded library (the
    bundle's, after a build from build/) is not loaded again: its static registrars would
    register the same creators twice.
    """
    from ...models.weights import file_sha256

    digest = file_sha256(path)
    if digest not in _LOADED:
        import_trt(module)
        try:
            ctypes.CDLL(str(Path(path).resolve()), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:  # missing CUDA/TensorRT libraries, wrong architecture, ...
            raise TokcompileError(f"cannot load plugin library '{path}': {exc}") from None
        _LOADED[digest] = Path(path)
        logger.debug("loaded TensorRT plugin library %s (sha256 %s)", path, digest[:12])
    return digest
