"""Client-side checks of a served bundle: load with every answer checked, and fault cases.

Used by ``benchmarks/bench_serve.py`` and the deploy tests (one copy of the request kinds). The
reference for every answer is the in-process runner (``tokcompile.load``) on that request's
images alone, so batching on the server must not change any image's result. Needs
``tritonclient[http]`` (the ``serve`` extra).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _defaults
from .triton_model import INPUT, OUTPUTS

ATOL = 1e-4  # served vs in-process, per output element, fp32 bundles (both run the same graph)


def tolerance(precision: str) -> float:
    """Served vs in-process tolerance for the precision the runner executes. fp16/bf16 results on
    ONNX Runtime's CPU depend on an image's row in the batch (~1e-3 in fp16, in-process too), so
    batching with other requests moves them within compare's tolerance for that precision."""
    return ATOL if precision == "fp32" else _defaults.COMPARE_ATOL[precision]


def http_client(url: str, timeout_s: float = 60.0) -> Any:
    import tritonclient.http as http

    return http.InferenceServerClient(url=url, connection_timeout=timeout_s, network_timeout=timeout_s)


def infer(client: Any, model: str, images: np.ndarray, datatype: str = "FP32") -> dict[str, np.ndarray]:
    """One request of ``images`` (any shape and dtype: faults send wrong ones) → the outputs."""
    import tritonclient.http as http

    tensor = http.InferInput(INPUT, list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    result = client.infer(model, [tensor])
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def max_error(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """Largest |served - in-process| over the served outputs; inf when an output or shape is missing."""
    worst = 0.0
    for name in OUTPUTS:
        if name not in expected:
            continue
        if name not in got or got[name].shape != expected[name].shape:
            return float("inf")
        worst = max(worst, float(np.abs(got[name] - expected[name]).max(initial=0.0)))
    return worst


def make_requests(pool: np.ndarray, count: int, low: int, high: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` requests of ``low``..``high`` images each, drawn in turn from ``pool`` [N, 3, H, W]."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(low, high + 1, size=count)
    start, requests = 0, []
    for size in sizes:
        rows = np.arange(start, start + size) % len(pool)
        requests.append(np.ascontiguousarray(pool[rows]))
        start += int(size)
    return requests


def reference(runner: Any, requests: Sequence[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """In-process answers, each request alone, and their latencies in seconds."""
    answers, latencies = [], []
    for images in requests:
        start = time.perf_counter()
        result = runner.run(images)
        latencies.append(time.perf_counter() - start)
        answers.append({n: result[n] for n in OUTPUTS if n in result})
    return answers, latencies


@dataclass
class LoadResult:
    """What K clients saw: counts, latencies (s), wall time (s), and the first few errors."""

    sent: int = 0
    answered: int = 0  # answered and equal to the in-process answer (within the tolerance)
    failed: int = 0  # an error came back (or none did)
    wrong: int = 0  # answered, but not what the in-process runner gives
    images: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    worst_error: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.answered - self.failed - self.wrong


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_load(
    url: str,
    model: str,
    requests: Sequence[np.ndarray],
    expected: Sequence[dict[str, np.ndarray]],
    clients: int,
    timeout_s: float = 60.0,
    deadline_s: Optional[float] = None,
    atol: float = ATOL,
) -> LoadResult:
    """``clients`` threads, each with its own connection, send ``requests`` (round robin, one at a
    time per client) and check each answer; stops sending after ``deadline_s``."""
    result = LoadResult()
    lock = threading.Lock()
    start = time.perf_counter()

    def client(index: int) -> None:
        connection = http_client(url, timeout_s)
        try:
            for i in range(index, len(requests), clients):
                if deadline_s is not None and time.perf_counter() - start > deadline_s:
                    return
                with lock:
                    result.sent += 1
                t0 = time.perf_counter()
                try:
                    got = infer(connection, model, requests[i])
                except Exception as exc:
                    with lock:
                        result.failed += 1
                        if len(result.errors) < 5:
                            result.errors.append(one_line(exc))
                    continue
                latency = time.perf_counter() - t0
                error = max_error(got, expected[i])
                with lock:
                    result.worst_error = max(result.worst_error, error)
                    if error <= atol:
                        result.answered += 1
                        result.images += len(requests[i])
                        result.latencies.append(latency)
                    else:
                        result.wrong += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    return result


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not text.startswith("[") else text


# ---------------------------------------------------------------------------- fault cases

FAULTS = (
    "wrong shape",
    "wrong dtype",
    "NaN input",
    "Inf input",
    "empty batch",
    "batch above --max-batch",
    "disconnect mid-request",
    "disconnect before the answer",
)


def send_fault(case: str, url: str, model: str, image_shape: Sequence[int], max_batch: int) -> str:
    """Send one faulty request; what the client got, in one line ('answered' if no error came)."""
    good = np.zeros((1, *image_shape), np.float32)
    payload: tuple[np.ndarray, str]
    if case == "wrong shape":
        payload = (np.zeros((1, image_shape[0], image_shape[1] // 2, image_shape[2]), np.float32), "FP32")
    elif case == "wrong dtype":
        payload = (good.astype(np.float64), "FP64")
    elif case in ("NaN input", "Inf input"):
        bad = np.zeros((2, *image_shape), np.float32)
        bad[1, 0, 0, 0] = np.nan if case == "NaN input" else np.inf
        payload = (bad, "FP32")
    elif case == "empty batch":
        payload = (np.zeros((0, *image_shape), np.float32), "FP32")
    elif case == "batch above --max-batch":
        payload = (np.zeros((max_batch + 1, *image_shape), np.float32), "FP32")
    elif case in ("disconnect mid-request", "disconnect before the answer"):
        return _disconnect(url, model, good, whole=case == "disconnect before the answer")
    else:
        raise ValueError(f"unknown fault case '{case}'")
    return outcome(url, model, *payload)


def outcome(url: str, model: str, images: np.ndarray, datatype: str = "FP32") -> str:
    """Send one request on a fresh connection: 'answered', or the error the client got (one line)."""
    try:
        connection = http_client(url, 10.0)
    except Exception as exc:
        return one_line(exc)
    try:
        infer(connection, model, images, datatype)
        return "answered"
    except Exception as exc:
        return one_line(exc)
    finally:
        connection.close()


def _disconnect(url: str, model: str, images: np.ndarray, whole: bool) -> str:
    """A raw HTTP/1.1 inference request (binary tensor extension) cut off mid-body, or sent whole
    and abandoned before the answer."""
    host, _, port = url.rpartition(":")
    body = images.tobytes()
    header = (
        f'{{"inputs":[{{"name":"{INPUT}","shape":{list(images.shape)},"datatype":"FP32",'
        f'"parameters":{{"binary_data_size":{len(body)}}}}}]}}'
    ).encode()
    request = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as s:
        s.sendall(request + header + (body if whole else body[: len(body) // 2]))
    return "nothing (the client left)"


def still_serving(
    url: str, model: str, images: np.ndarray, expected: dict[str, np.ndarray], atol: float = ATOL
) -> bool:
    """A good request right now is answered with the in-process answer."""
    connection = http_client(url)
    try:
        return max_error(infer(connection, model, images), expected) <= atol
    except Exception:
        return False
    finally:
        connection.close()


@dataclass
class ShutdownResult:
    in_flight: int  # requests sent before the stop
    accepted: Optional[int]  # of those, how many the server had accepted (None: not counted)
    answered: int  # of those, answered with the in-process answer
    unanswered: list[str]  # what the others got
    new_request: str  # what a request sent once the server stopped being ready got


def accepted_requests(metrics_url: str, model: str) -> Callable[[], int]:
    """A counter of the requests ``model`` accepted since this call: queued (pending) plus finished,
    from Triton's Prometheus metrics. Requests executing right now count in neither, so it never
    over-counts."""

    def read() -> dict[str, float]:
        with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for name in (
            "nv_inference_pending_request_count",
            "nv_inference_request_success",
            "nv_inference_request_failure",
        ):
            match = re.search(rf'^{name}{{model="{re.escape(model)}",version="[^"]*"}} (\S+)$', text, re.MULTILINE)
            values[name] = float(match.group(1)) if match else 0.0
        return values

    base = read()

    def count() -> int:
        now = read()
        return int(sum(now[n] - (base[n] if n != "nv_inference_pending_request_count" else 0) for n in now))

    return count


def during_shutdown(
    url: str,
    model: str,
    stop: Any,
    in_flight: Sequence[np.ndarray],
    expected: Sequence[dict[str, np.ndarray]],
    accepted: Optional[Callable[[], int]] = None,
    timeout_s: float = 60.0,
    atol: float = ATOL,
) -> ShutdownResult:
    """Send ``in_flight`` concurrently; once the server has accepted them all (``accepted()``, e.g.
    ``accepted_requests``; else after 50 ms) call ``stop()`` (e.g. SIGTERM to the server); wait
    until the server is no longer ready and send one more request. Every in-flight request must
    still be answered; the late one must get an error."""
    got: list[Optional[str]] = [None] * len(in_flight)
    sent = threading.Barrier(len(in_flight) + 1)

    def send(i: int) -> None:
        connection = http_client(url, timeout_s)
        try:
            sent.wait()
            answer = infer(connection, model, in_flight[i])
            got[i] = "answered" if max_error(answer, expected[i]) <= atol else "a different answer"
        except Exception as exc:
            got[i] = one_line(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(in_flight))]
    for t in threads:
        t.start()
    sent.wait()
    deadline = time.monotonic() + timeout_s
    time.sleep(0.05)  # the requests leave their sockets
    taken = accepted() if accepted is not None else None
    while taken is not None and accepted is not None and taken < len(in_flight) and time.monotonic() < deadline:
        time.sleep(0.01)
        taken = accepted()
    stop()
    probe = http_client(url, 5.0)
    while time.monotonic() < deadline:
        try:
            if not probe.is_server_ready():
                break
        except Exception:
            break  # the endpoint is gone already
        time.sleep(0.01)
    probe.close()
    new = outcome(url, model, in_flight[0])
    for t in threads:
        t.join(timeout_s)
    answers = [g or "no answer" for g in got]
    return ShutdownResult(
        in_flight=len(in_flight),
        accepted=taken,
        answered=answers.count("answered"),
        unanswered=[a for a in answers if a != "answered"],
        new_request=new,
    )
