"""The Triton Python-backend model that serves a bundle (server-side staging).

Triton loads ``model.py`` (``deploy/triton_entry.py``, copied), which imports
``TritonPythonModel`` from here. Each model instance is one Python-backend process holding one
``tokcompile.load(bundle)`` runner: the same staged runner as in-process (buckets, split by
count, ONNX Runtime or TensorRT), so a deployment runs exactly what ``tokcompile.load`` runs.

Request contract (config.pbtxt, dynamic batching): input ``images`` FP32 [b, 3, H, W];
outputs ``logits`` FP32 [b, classes] and ``features`` FP32 [b, C]. The dynamic batcher hands
``execute`` several requests at once; their images run as one batch and each request gets back
its own rows. A request that cannot run (empty, NaN/Inf pixels, a shape Triton let through)
gets its own error while its batch-mates are answered; a batch that fails as a whole is rerun
request by request so that only the request that broke it fails.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..manifest import Manifest
from ..passes.names import FLOAT_OUTPUTS

logger = logging.getLogger(__name__)

INPUT = "images"
OUTPUTS = FLOAT_OUTPUTS  # logits, features: what a deployment serves


@dataclass(frozen=True)
class Refusal:
    """A request's error: bad input (the client's to fix) or the model failing on it (internal)."""

    message: str
    internal: bool = False


# What ``run_requests`` returns per request: its outputs, or why it got none.
Answer = Union[dict[str, np.ndarray], Refusal]


def check_images(images: np.ndarray, input_shape: Sequence[int]) -> Optional[str]:
    """Why ``images`` (one request) cannot run, or None. images: [b, 3, H, W] float32, b ≥ 1."""
    expected = f"float32 [b, {', '.join(map(str, input_shape))}]"
    if images.dtype != np.float32:
        return f"'{INPUT}' must be {expected}, got {images.dtype}"
    if images.ndim != len(input_shape) + 1 or tuple(images.shape[1:]) != tuple(input_shape):
        return f"'{INPUT}' must be {expected}, got shape {list(images.shape)}"
    if images.shape[0] == 0:
        return f"'{INPUT}' is an empty batch (0 images); send at least one image"
    finite = np.isfinite(images)
    if not finite.all():
        bad = sorted({int(i) for i in np.nonzero(~finite.reshape(len(images), -1).all(axis=1))[0]})
        return f"'{INPUT}' holds NaN or Inf values (image(s) {bad} of {len(images)}); send finite pixels"
    return None


def run_requests(runner: Any, requests: Sequence[np.ndarray], outputs: Sequence[str] = OUTPUTS) -> list[Answer]:
    """Run the valid requests as one batch; each request gets its rows of ``outputs`` or an error.

    runner: a ``tokcompile.load`` runner; requests: one [b_i, 3, H, W] array per request.
    """
    answers: list[Optional[Answer]] = []
    for images in requests:
        problem = check_images(images, runner.input_shape)
        answers.append(Refusal(problem) if problem else None)
    valid = [i for i, a in enumerate(answers) if a is None]
    if valid:
        try:
            batch = _run(runner, [requests[i] for i in valid], outputs)
        except Exception as exc:  # one request may have broken the batch: rerun each alone
            logger.warning("a batch of %d request(s) failed (%s); running them one by one", len(valid), exc)
            batch = [_run_alone(runner, requests[i], outputs) for i in valid]
        for i, answer in zip(valid, batch):
            answers[i] = answer
    return [a if a is not None else Refusal("no answer", internal=True) for a in answers]


def _run(runner: Any, arrays: list[np.ndarray], outputs: Sequence[str]) -> list[Answer]:
    result = runner.run(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
    ends = np.cumsum([len(a) for a in arrays])
    return [
        {n: np.ascontiguousarray(result[n][end - len(a) : end], dtype=np.float32) for n in outputs}
        for a, end in zip(arrays, ends)
    ]


def _run_alone(runner: Any, images: np.ndarray, outputs: Sequence[str]) -> Answer:
    try:
        return _run(runner, [images], outputs)[0]
    except Exception as exc:
        logger.error("request of %d image(s) failed: %s: %s", len(images), type(exc).__name__, exc)
        return Refusal(f"the model failed on this request: {type(exc).__name__}: {exc}", internal=True)


def describe(manifest: Manifest, backend: str) -> str:
    """One line naming the bundle, the backend that runs it and its stage buckets."""
    stages = manifest.stages
    buckets = "; ".join(
        f"after stage {s.index}: {','.join(map(str, s.buckets))}" for s in stages[:-1] if s.count and s.buckets
    )
    return (
        f"{manifest.model.name} · {manifest.method.name} · {manifest.precision}, backend {backend}, "
        f"{len(stages)} stage(s), buckets {buckets or 'none (static token counts)'}"
    )


class _TritonLogHandler(logging.Handler):
    """tokcompile's log records → Triton's log (``pb_utils.Logger``), so the server log shows them."""

    def __init__(self, pb_logger: Any) -> None:
        super().__init__()
        self.pb_logger = pb_logger

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self.pb_logger.log_error(text)
        elif record.levelno >= logging.WARNING:
            self.pb_logger.log_warn(text)
        else:
            self.pb_logger.log_info(text)


def bundle_path(parameter: str, model_repository: str, model_version: str) -> Path:
    """config.pbtxt's ``bundle`` parameter: absolute, or relative to the model's version folder."""
    path = Path(parameter)
    return path if path.is_absolute() else Path(model_repository) / model_version / path


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # inside Triton only

        from ..runtime.runner import load

        self.pb = pb_utils
        root = logging.getLogger("tokcompile")
        if not any(isinstance(h, _TritonLogHandler) for h in root.handlers):
            root.addHandler(_TritonLogHandler(pb_utils.Logger))
            root.setLevel(logging.INFO)
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        bundle = bundle_path(params.get("bundle", "bundle"), args["model_repository"], args["model_version"])
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group") or []) or 1
        # Instances share the CPU: split its cores between them rather than oversubscribe.
        threads = int(params["threads"]) if params.get("threads") else max(1, (os.cpu_count() or 1) // instances)
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        self.runner = load(bundle, threads=threads)
        self.outputs = [n for n in OUTPUTS if n in self.runner.output_names]
        logger.info(
            "%s: serving %s (%s), %d thread(s)",
            args["model_instance_name"],
            bundle,
            describe(self.runner.manifest, self.runner.backend),
            threads,
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        live, arrays = [], []
        for i, request in enumerate(requests):
            if request.is_cancelled():  # the client went away while the request waited in the queue
                responses[i] = pb.InferenceResponse(error=pb.TritonError("request cancelled", pb.TritonError.CANCELLED))
                continue
            live.append(i)
            arrays.append(pb.get_input_tensor_by_name(request, INPUT).as_numpy())
        for i, answer in zip(live, run_requests(self.runner, arrays, self.outputs)):
            if isinstance(answer, Refusal):
                code = pb.TritonError.INTERNAL if answer.internal else pb.TritonError.INVALID_ARG
                responses[i] = pb.InferenceResponse(error=pb.TritonError(answer.message, code))
            else:
                responses[i] = pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in answer.items()])
        return responses

    def finalize(self) -> None:
        logger.info("unloaded %s", self.runner.directory)
