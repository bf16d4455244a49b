"""``serve``: a bundle (or a repository written by ``export-triton``) behind Triton Inference Server.

A bundle is served as one model, the same entry model ``export-triton`` writes (config.pbtxt +
model.py running ``tokcompile.load``), in a temporary repository that refers to the bundle in
place. The server is nvidia-pytriton's ``tritonserver`` (deploy/tritonserver.py). The call
blocks until SIGINT or SIGTERM (or ``stop`` is set), then drains: in-flight requests are
answered, new ones are refused, and the server exits.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..backends import get_backend
from ..errors import TokcompileError
from ..manifest import Manifest
from ..runtime.bundle import MANIFEST, read_manifest
from .triton import BUNDLE_DIR, MARKER, VERSION, batching, model_name, read_repository, write_entry_model
from .triton_model import describe
from .tritonserver import Endpoints, TritonServer, endpoints

logger = logging.getLogger(__name__)


def _prepare(
    target: Path, workdir: Path, name: Optional[str], settings: dict[str, Optional[int]]
) -> tuple[Path, str, Manifest]:
    """(repository, model name, manifest) to serve ``target``: a bundle or an exported repository."""
    if (target / MARKER).is_file():
        record = read_repository(target)
        given = [f"--{k.replace('_', '-')}" for k, v in settings.items() if v is not None] + (
            ["--name"] if name else []
        )
        if given:
            raise TokcompileError(
                f"the repository's config.pbtxt sets {', '.join(given)}; to change them, export it again "
                "('tokcompile export-triton BUNDLE REPO --force ...')"
            )
        model = str(record["model"])
        manifest = read_manifest(target / model / VERSION / BUNDLE_DIR)
        return target, model, manifest
    manifest = read_manifest(target)  # a one-line error names a missing or corrupt bundle
    model = model_name(target, name)
    gpu = get_backend(manifest.backend).device != "gpu" or _cuda_visible()
    if not gpu:
        logger.warning(
            "serve: no CUDA device here; the %s bundle's instances run its ONNX files on the CPU", manifest.backend
        )
    values = (settings["max_batch"], settings["max_queue_delay_us"], settings["instances"])
    repository = workdir / "repository"
    write_entry_model(
        repository / model, model, target, manifest, batching(*values, manifest, gpu=gpu), copy_bundle=False
    )
    return repository, model, manifest


def _cuda_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def serve(
    target: Path | str,
    host: Optional[str] = None,
    http_port: Optional[int] = None,
    grpc_port: Optional[int] = None,
    metrics_port: Optional[int] = None,
    max_batch: Optional[int] = None,
    max_queue_delay_us: Optional[int] = None,
    instances: Optional[int] = None,
    name: Optional[str] = None,
    ready_timeout_s: Optional[float] = None,
    stop: Optional[threading.Event] = None,
) -> None:
    """Serve until a signal (or ``stop``); raises TokcompileError for bad input or a failed start.

    Nothing is left running when this returns or raises.
    """
    target = Path(target)
    settings = {"max_batch": max_batch, "max_queue_delay_us": max_queue_delay_us, "instances": instances}
    if (target / MANIFEST).is_file() or not (target / MARKER).is_file():
        batching(max_batch, max_queue_delay_us, instances)  # bad values fail before anything is read
    stop = stop or threading.Event()
    abort = threading.Event()
    with tempfile.TemporaryDirectory(prefix="tokcompile-serve-") as tmp:
        repository, model, manifest = _prepare(target, Path(tmp), name, settings)
        ends = endpoints(host, http_port, grpc_port, metrics_port)
        server = TritonServer([repository], ends, Path(tmp))
        logger.info("serve: model '%s' from %s: %s", model, target, describe(manifest, f"{manifest.backend} (built)"))
        restore = _handle_signals(stop, abort)
        try:
            server.start()
            seconds = server.wait_ready(ready_timeout_s, cancel=stop)
            if seconds is None:
                logger.info("serve: interrupted while starting")
                return
            _log_ready(model, ends, seconds)
            while not stop.wait(0.2):
                if not server.running:
                    raise TokcompileError(f"tritonserver exited unexpectedly: {server.error()}")
            logger.info("serve: stopping: answering in-flight requests, refusing new ones (signal again to hurry)")
            start = time.monotonic()
            server.stop(graceful=True, abort=abort)
            logger.info("serve: stopped in %.1f s", time.monotonic() - start)
        finally:
            server.stop(graceful=False)  # no-op after a clean stop; otherwise nothing stays running
            restore()


def _log_ready(model: str, ends: Endpoints, seconds: float) -> None:
    logger.info(
        "serve: ready in %.1f s: HTTP http://%s/v2/models/%s/infer, gRPC %s, metrics http://%s/metrics; "
        "Ctrl-C or SIGTERM stops it",
        seconds,
        ends.address(ends.http_port),
        model,
        ends.address(ends.grpc_port),
        ends.address(ends.metrics_port),
    )


def _handle_signals(stop: threading.Event, abort: threading.Event) -> Any:
    """SIGINT/SIGTERM set ``stop`` (a second one sets ``abort``); returns a function restoring the
    previous handlers. Off the main thread (where handlers cannot be set) ``stop`` alone stops."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            abort.set()
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
