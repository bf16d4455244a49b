"""ONNX Runtime backend (CPU reference, always available).

``build`` checks that ONNX Runtime can execute a stage's ONNX file in its precision; when it
cannot (for example bf16 on the CPU), the caller exports an fp32 twin and the bundle records
which file ONNX Runtime runs and why. ``load`` returns a runner over one ONNX file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

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
