"""ONNX Runtime backend (CPU reference, always available).

It runs the bundle's ONNX files themselves: ``build`` writes nothing. ``cannot_execute`` tells
whether ONNX Runtime can execute a stage's ONNX file in its precision; when it cannot (for
example bf16 on the CPU), the caller exports an fp32 twin and the bundle records which file ONNX
Runtime runs and why. Every bundle keeps its ONNX files, so this backend can run any bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import TokcompileError
from ..manifest import Manifest, Profile, StageEntry
from .base import BackendBase, BuildOptions, BuildOutput, Loaded

logger = logging.getLogger(__name__)

NAME = "onnxruntime"


def _session(path: Path, threads: Optional[int] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Several sessions run in turn (the stages of a staged bundle; bundle and baselines in an
    # interleaved benchmark). Spinning intra-op threads of the idle sessions would steal the cores
    # of the running one: measured on the 2-core CI machine, a 10-stage DeiT-S ATS bundle ran
    # 1105-1500 ms per batch of 16 with spinning and 905-948 ms without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def cannot_execute(path: Path) -> Optional[str]:
    """None when ONNX Runtime's CPU provider runs ``path``; otherwise its reason, one line."""
    try:
        _session(path)
    except Exception as exc:  # ORT raises its own exception types (NOT_IMPLEMENTED, ...)
        return str(exc).strip().splitlines()[0][:200]
    return None


class OrtRunner:
    """Runs one ONNX file: numpy float32 images [B, 3, H, W] → dict of named outputs."""

    def __init__(self, path: Path, threads: Optional[int] = None) -> None:
        self.path = Path(path)
        self.session = _session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray, outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        values = self.session.run(names, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(names, values))


def load(path: Path, threads: Optional[int] = None) -> OrtRunner:
    return OrtRunner(path, threads)


class OnnxRuntime(BackendBase):
    name = NAME
    label = "ONNX Runtime"
    needs = "ONNX Runtime"

    def probe(self) -> Optional[str]:
        return None

    def plan(
        self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions
    ) -> list[list[Profile]]:
        try:
            return super().plan(directory, stages, full_count, options)
        except ValueError as exc:  # only report.md's engine commands need the plan
            logger.warning("no TensorRT engine commands in report.md: %s", exc)
            return [[] for _ in stages]

    def build(self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions) -> BuildOutput:
        return BuildOutput()

    def unavailable(self, manifest: Manifest) -> Optional[str]:
        return None

    def load(self, directory: Path, manifest: Manifest, threads: Optional[int] = None) -> Loaded:
        first = manifest.stages[0]
        if first.onnxruntime_file != first.file:
            logger.warning(
                "ONNX Runtime cannot execute the %s graph on this CPU (%s); running its fp32 twin %s",
                manifest.precision,
                first.onnxruntime_note or "see manifest",
                first.onnxruntime_file,
            )
        try:
            calls = [load(Path(directory) / s.onnxruntime_file, threads).session.run for s in manifest.stages]
        except Exception as exc:  # ONNX Runtime's own types: InvalidProtobuf, Fail, ...
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise TokcompileError(
                f"bundle '{directory}': ONNX Runtime cannot load its ONNX files ({line}); rebuild the bundle"
            ) from None
        return Loaded(calls, first.onnxruntime_file, first.onnxruntime_precision)
