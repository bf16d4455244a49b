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
from .staged import StagedRunner, ort_stage_calls

logger = logging.getLogger(__name__)


class BundleRunner:
    """Runs a bundle's stage files in order (one file for static methods) with bucket dispatch."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: Optional[int] = None) -> None:
        self.directory = directory
        self.manifest = manifest
        stages = manifest["stages"]
        backend = manifest["backend"]
        if backend != "onnxruntime":
            raise TokcompileError(f"bundle '{directory}' uses backend '{backend}', which this tokcompile cannot run")
        self.file = stages[0]["onnxruntime_file"]
        self.precision = stages[0]["onnxruntime_precision"]
        if self.file != stages[0]["file"]:
            logger.warning(
                "ONNX Runtime cannot execute the %s graph on this CPU (%s); running its fp32 twin %s",
                manifest["precision"],
                stages[0].get("onnxruntime_note", "see manifest"),
                self.file,
            )
        final = manifest.get("final_outputs") or {n: n for n in stages[0]["outputs"]}
        self.engine = StagedRunner(stages, ort_stage_calls(directory, stages, "onnxruntime_file", threads), final)
        self.output_names = list(final)
        self.input_shape = tuple(manifest["model"]["input_shape"])

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise TokcompileError(
                f"images must be float32 [B, {', '.join(map(str, self.input_shape))}], got shape {list(images.shape)}"
            )
        return images.astype(np.float32, copy=False)

    @property
    def staged(self) -> bool:
        return len(self.manifest["stages"]) > 1

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs: ``logits`` [B, classes], ``features``, and per reduction layer
        ``kept_ids_<block>`` / ``merge_map_<block>`` / ``count_<block>``."""
        return self.engine.run(self._check(images))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)["logits"]


def load(bundle: Path | str, threads: Optional[int] = None) -> BundleRunner:
    """Verify ``bundle`` (manifest and sha256 of every file) and return its runner."""
    directory = Path(bundle)
    return BundleRunner(directory, read_manifest(directory), threads)
