"""``tokcompile.load(bundle)``: run a bundle from Python.

The backend comes from the manifest. ``runner(images)`` returns logits; ``runner.run`` returns
every output, including the kept-token ids of each reduction layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TokcompileError
from .bundle import read_manifest

logger = logging.getLogger(__name__)


class BundleRunner:
    def __init__(self, directory: Path, manifest: dict[str, Any], threads: Optional[int] = None) -> None:
        self.directory = directory
        self.manifest = manifest
        stage = manifest["stages"][0]
        backend = manifest["backend"]
        if backend != "onnxruntime":
            raise TokcompileError(f"bundle '{directory}' uses backend '{backend}', which this tokcompile cannot run")
        from ..backends import onnxruntime as ort_backend

        self.file = stage["onnxruntime_file"]
        self.precision = stage["onnxruntime_precision"]
        if self.file != stage["file"]:
            logger.warning(
                "ONNX Runtime cannot execute the %s graph on this CPU (%s); running its fp32 twin %s",
                manifest["precision"],
                stage.get("onnxruntime_note", "see manifest"),
                self.file,
            )
        self.backend = ort_backend.load(directory / self.file, threads)
        self.input_shape = tuple(manifest["model"]["input_shape"])

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise TokcompileError(
                f"images must be float32 [B, {', '.join(map(str, self.input_shape))}], got shape {list(images.shape)}"
            )
        return images.astype(np.float32, copy=False)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs: ``logits`` [B, classes] and ``kept_ids_<block>`` [B, k] per reduction layer."""
        return self.backend(self._check(images))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.backend(self._check(images), outputs=["logits"])["logits"]


def load(bundle: Path | str, threads: Optional[int] = None) -> BundleRunner:
    """Verify ``bundle`` (manifest and sha256 of every file) and return its runner."""
    directory = Path(bundle)
    return BundleRunner(directory, read_manifest(directory), threads)
