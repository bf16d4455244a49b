"""Helpers for the deploy tests: sample images, a served CLI process, child-process checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokcompile.deploy.tritonserver import free_ports

ROOT = Path(__file__).resolve().parents[2]
# The shared sample photos beside the repository (README: ../shared/imagenet-sample).
SAMPLE = ROOT.parent / "shared" / "imagenet-sample"
READY_TIMEOUT_S = 120


def sample_images(n: int, size: int, timm_name: str = "test_vit") -> np.ndarray:
    """``n`` real photos preprocessed for ``timm_name`` ([n, 3, size, size]); seeded random images
    where the sample folder is missing."""
    if SAMPLE.is_dir():
        from tokcompile.data.images import image_batches, preprocessing

        images = next(image_batches(SAMPLE, preprocessing(timm_name, (3, size, size)), n, limit=n))
        assert images.shape == (n, 3, size, size)
        return images
    return np.random.default_rng(n).standard_normal((n, 3, size, size), dtype=np.float32)


@dataclass
class Served:
    process: subprocess.Popen
    url: str  # host:port of HTTP
    grpc: str
    metrics: str
    model: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def serve_cli(target: Path, log: Path, *flags: str) -> Iterator[Served]:
    """``tokcompile serve TARGET`` as a user runs it (a child process, loopback, free ports), ready;
    stopped with SIGTERM (then SIGKILL) on exit if still running."""
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "tokcompile.cli.main", "serve", str(target), "--http-port", str(http)]
    cmd += ["--grpc-port", str(grpc), "--metrics-port", str(metrics), *flags]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    served = Served(process, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}", target.name, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "serve: ready" not in served.output():
            assert process.poll() is None, f"serve exited: {served.output()}"
            assert time.monotonic() < deadline, f"serve not ready after {READY_TIMEOUT_S} s: {served.output()}"
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def model_stats(url: str, model: str, at_least: int = 0, timeout_s: float = 15.0) -> tuple[int, int, int]:
    """(requests answered, images, model runs) so far, from Triton's statistics endpoint.

    Triton counts a request once its response has gone out, so a client may hold the answer a
    moment before the statistics show it: wait (bounded) until ``at_least`` requests are counted.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as response:
            stats = json.loads(response.read())["model_stats"][0]
        counts = (
            int(stats["inference_stats"]["success"]["count"]),
            int(stats["inference_count"]),
            int(stats["execution_count"]),
        )
        if counts[0] >= at_least or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def _stat(pid: int | str) -> tuple[str, str, int]:
    """(command name, state, parent pid) of a process; ("", "X", -1) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", "X", -1
    fields = text[text.rindex(")") + 2 :].split()
    return text[text.index("(") + 1 : text.rindex(")")], fields[0], int(fields[1])


def alive(pid: int) -> bool:
    return _stat(pid)[1] not in ("X", "Z")


def children(pid: int | None = None) -> dict[int, str]:
    """{pid: command name} of the live child processes of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            name, state, parent = _stat(entry.name)
            if parent == pid and state not in ("X", "Z"):
                found[int(entry.name)] = name
    return found
