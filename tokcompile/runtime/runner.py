"""``tokcompile.load(bundle)``: run a bundle from Python.

The backend comes from the manifest. ``runner(images)`` returns logits; ``runner.run`` returns
every output, including the kept-token ids of each reduction layer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..backends import REFERENCE, get_backend
from ..errors import TokcompileError
from ..manifest import Manifest
from .bundle import read_manifest
from .staged import StagedRunner

logger = logging.getLogger(__name__)


class BundleRunner:
    """Runs a bundle's stage files in order (one file for static methods) with bucket dispatch.

    ``backend``: None runs the bundle's own backend where it can run, else (with a warning) its
    ONNX files with ONNX Runtime, which every bundle keeps; a named backend must run here.
    """

    def __init__(
        self, directory: Path, manifest: Manifest, threads: Optional[int] = None, backend: Optional[str] = None
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        try:
            built = get_backend(manifest.backend)
        except TokcompileError:
            raise TokcompileError(
                f"bundle '{directory}' uses backend '{manifest.backend}', which this tokcompile cannot run"
            ) from None
        chosen = built if backend is None else get_backend(backend)
        if chosen.name not in (built.name, REFERENCE):
            raise TokcompileError(
                f"bundle '{directory}' has no {chosen.label} engines; rebuild it with --backend {chosen.name}"
            )
        problem = chosen.unavailable(manifest)
        if problem is not None and backend is None:
            logger.warning(
                "bundle '%s' was built for %s, which cannot run here (%s); running its ONNX files with %s",
                directory,
                chosen.label,
                problem,
                get_backend(REFERENCE).label,
            )
            chosen = get_backend(REFERENCE)
        loaded = chosen.load(directory, manifest, threads)
        self.backend, self.file, self.precision = chosen.name, loaded.file, loaded.precision
        final = manifest.final_outputs
        # Staged bundles split a batch by count where one slow image would set everyone's bucket; a
        # split must save at least one full image's token slots (runtime/buckets.split_by_count).
        split = float(manifest.model.num_tokens)
        self.engine = StagedRunner(manifest.stages, loaded.calls, final, split_overhead=split)
        self.output_names = list(final)
        self.input_shape = manifest.input_shape

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise TokcompileError(
                f"images must be float32 [B, {', '.join(map(str, self.input_shape))}], got shape {list(images.shape)}"
            )
        return images.astype(np.float32, copy=False)

    @property
    def staged(self) -> bool:
        return self.manifest.staged

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs: ``logits`` [B, classes], ``features``, and per reduction layer
        ``kept_ids_<block>`` / ``merge_map_<block>`` / ``count_<block>``."""
        return self.engine.run(self._check(images))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)["logits"]


def load(bundle: Path | str, threads: Optional[int] = None, backend: Optional[str] = None) -> BundleRunner:
    """Verify ``bundle`` (manifest and sha256 of every file) and return its runner.

    ``backend``: None runs the bundle's own (a TensorRT or TensorRT for RTX bundle falls back to its
    ONNX files with a warning where its TensorRT or a GPU is missing); "onnxruntime" always runs
    the ONNX files; "tensorrt" / "tensorrt-rtx" require the bundle's engines to run here.
    """
    directory = Path(bundle)
    return BundleRunner(directory, read_manifest(directory), threads, backend)
