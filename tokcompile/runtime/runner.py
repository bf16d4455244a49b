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

BACKENDS = ("onnxruntime", "tensorrt")


class BundleRunner:
    """Runs a bundle's stage files in order (one file for static methods) with bucket dispatch."""

    def __init__(
        self, directory: Path, manifest: dict[str, Any], threads: Optional[int] = None, backend: Optional[str] = None
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        stages = manifest["stages"]
        built = manifest["backend"]
        if built not in BACKENDS:
            raise TokcompileError(f"bundle '{directory}' uses backend '{built}', which this tokcompile cannot run")
        if backend not in (None, *BACKENDS):
            raise TokcompileError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
        if backend == "tensorrt" and built != "tensorrt":
            raise TokcompileError(f"bundle '{directory}' has no TensorRT engines; rebuild it with --backend tensorrt")
        final = manifest.get("final_outputs") or {n: n for n in stages[0]["outputs"]}
        self.backend = "tensorrt" if built == "tensorrt" and backend != "onnxruntime" else "onnxruntime"
        if self.backend == "tensorrt":
            from ..backends import tensorrt as trt_backend

            # The ONNX files the engines were built from are in every TensorRT bundle: where
            # TensorRT or a GPU is missing, ONNX Runtime runs them (unless TensorRT was asked for).
            reason = trt_backend.available(torch_cuda=True)
            if reason is None or backend == "tensorrt":
                self.file = stages[0]["tensorrt_file"]
                self.precision = manifest["precision"]
                calls = trt_backend.trt_stage_calls(directory, stages, manifest)
            else:
                logger.warning(
                    "bundle '%s' was built for TensorRT, which cannot run here (%s); running its ONNX files "
                    "with ONNX Runtime",
                    directory,
                    reason,
                )
                self.backend = "onnxruntime"
        if self.backend == "onnxruntime":
            self.file = stages[0]["onnxruntime_file"]
            self.precision = stages[0]["onnxruntime_precision"]
            if self.file != stages[0]["file"]:
                logger.warning(
                    "ONNX Runtime cannot execute the %s graph on this CPU (%s); running its fp32 twin %s",
                    manifest["precision"],
                    stages[0].get("onnxruntime_note", "see manifest"),
                    self.file,
                )
            try:
                calls = ort_stage_calls(directory, stages, "onnxruntime_file", threads)
            except Exception as exc:  # ONNX Runtime's own types: InvalidProtobuf, Fail, ...
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise TokcompileError(
                    f"bundle '{directory}': ONNX Runtime cannot load its ONNX files ({first}); rebuild the bundle"
                ) from None
        # Staged bundles split a batch by count where one slow image would set everyone's bucket; a
        # split must save at least one full image's token slots (runtime/buckets.split_by_count).
        model = manifest["model"]
        tokens = model["num_prefix_tokens"] + int(np.prod(model["grid"]))
        self.engine = StagedRunner(stages, calls, final, split_overhead=float(tokens))
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


def load(bundle: Path | str, threads: Optional[int] = None, backend: Optional[str] = None) -> BundleRunner:
    """Verify ``bundle`` (manifest and sha256 of every file) and return its runner.

    ``backend``: None runs the bundle's own (a TensorRT bundle falls back to its ONNX files with a
    warning where TensorRT or a GPU is missing); "onnxruntime" always runs the ONNX files;
    "tensorrt" requires the engines to run here.
    """
    directory = Path(bundle)
    return BundleRunner(directory, read_manifest(directory), threads, backend)
