"""Load and faults against a bundle served by Triton (loopback only, bounded in count and time).

Modes: ``serve`` runs ``tokcompile serve BUNDLE``; ``repo`` runs ``tokcompile export-triton
BUNDLE REPO`` and then ``tokcompile serve REPO`` (nvidia-pytriton's ``tritonserver
--model-repository REPO --backend-directory ...``); ``both`` runs one after the other. For each:

1. load: K clients (one connection each) × M requests of ``--batch`` images (sizes drawn with a
   seed, real photos from ``--images``); every answer is checked against the in-process runner
   (``tokcompile.load``) on that request alone (≤ 1e-4): sent / answered / failed / wrong / lost,
   p50/p99 latency, throughput, against the in-process runner on the same requests run one after
   another;
2. faults (tokcompile.deploy.probe.FAULTS), each while a background client keeps sending good
   requests: what the faulty client got, whether the background client saw a failure, whether a
   good request is answered right after;
3. a request during shutdown: SIGTERM with requests in flight; are they answered, what does a
   request sent once readiness dropped get, how does the command exit.

    python benchmarks/bench_serve.py deit_s-evit-fp32 --clients 4 --requests 25 --batch 1:8
    python benchmarks/bench_serve.py deit_s-ats-fp32 --mode both --max-batch 8

Goal (issue 11): every request answered, none lost, none mixed up; each fault answered with an
error while the other clients are served.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import tokcompile
from tokcompile.data.images import image_batches, preprocessing
from tokcompile.deploy import probe
from tokcompile.deploy.tritonserver import free_ports

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "imagenet-sample"


def start_serve(target: Path, log: Path, flags: list[str], timeout_s: float) -> tuple[subprocess.Popen, str, str, str]:
    """``tokcompile serve TARGET`` on free loopback ports, ready; (process, HTTP and metrics host:port, model)."""
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "tokcompile.cli.main", "serve", str(target), "--http-port", str(http)]
    cmd += ["--grpc-port", str(grpc), "--metrics-port", str(metrics), *flags]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while "serve: ready" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"serve did not start:\n{log.read_text()}")
        time.sleep(0.2)
    model = log.read_text().split("serve: model '", 1)[1].split("'", 1)[0]
    print(f"  tokcompile {' '.join(cmd[3:])}")
    return process, f"127.0.0.1:{http}", f"127.0.0.1:{metrics}", model


class Background:
    """One client sending good requests in a loop, counting what it got, until stopped."""

    def __init__(self, url: str, model: str, requests: list[np.ndarray], expected: list[dict], atol: float) -> None:
        self.url, self.model, self.requests, self.expected, self.atol = url, model, requests, expected, atol
        self.ok = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = probe.http_client(self.url)
        i = 0
        while not self.stop.is_set():
            k = i % len(self.requests)
            try:
                got = probe.infer(client, self.model, self.requests[k])
                good = probe.max_error(got, self.expected[k]) <= self.atol
            except Exception:
                good = False
            self.ok += good
            self.failed += not good
            i += 1
        client.close()

    def window(self) -> tuple[int, int]:
        return self.ok, self.failed


def load_phase(url: str, model: str, requests, expected, reference_s: list[float], args) -> None:
    warm = slice(0, 2 * args.clients)  # first runs allocate (ONNX Runtime arenas, shared memory): not timed
    probe.run_load(url, model, requests[warm], expected[warm], args.clients, args.request_timeout)
    result = probe.run_load(
        url, model, requests, expected, args.clients, args.request_timeout, args.deadline, args.atol
    )
    images = sum(len(r) for r in requests)
    served_ips = result.images / result.seconds
    ref_ips = images / sum(reference_s)
    print(f"  load: {args.clients} clients × {args.requests} requests of {args.batch} images ({images} images)")
    print(
        f"    sent {result.sent}, answered {result.answered}, failed {result.failed}, wrong {result.wrong}, "
        f"lost {result.lost}; worst |served - in-process| {result.worst_error:.2e} (tolerance {args.atol:g})"
    )
    print(
        f"    served:     {served_ips:7.1f} img/s, {result.answered / result.seconds:6.2f} req/s, latency p50 "
        f"{1e3 * probe.percentile(result.latencies, 50):7.1f} ms, p99 {1e3 * probe.percentile(result.latencies, 99):7.1f} ms"
    )
    print(
        f"    in-process: {ref_ips:7.1f} img/s, {len(requests) / sum(reference_s):6.2f} req/s, latency p50 "
        f"{1e3 * probe.percentile(reference_s, 50):7.1f} ms, p99 {1e3 * probe.percentile(reference_s, 99):7.1f} ms "
        f"(one request at a time); served / in-process throughput {served_ips / ref_ips:.2f}×"
    )
    for error in result.errors:
        print(f"    error: {error}")


def fault_phase(url: str, model: str, shape: tuple[int, ...], requests, expected, args) -> list[tuple[str, str, str]]:
    rows = []
    background = Background(url, model, requests[:4], expected[:4], args.atol)
    background.thread.start()
    for case in probe.FAULTS:
        ok0, failed0 = background.window()
        got = probe.send_fault(case, url, model, shape, args.max_batch)
        # The other client must get at least one more answer after the fault (bounded wait).
        deadline = time.monotonic() + args.request_timeout
        while background.window()[0] <= ok0 + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        ok1, failed1 = background.window()
        after = probe.still_serving(url, model, requests[0], expected[0], args.atol)
        others = f"{ok1 - ok0} answered, {failed1 - failed0} failed"
        rows.append((case, got, f"{'yes' if after and failed1 == failed0 else 'NO'} (other client: {others})"))
    background.stop.set()
    background.thread.join(args.request_timeout)
    return rows


def shutdown_phase(process: subprocess.Popen, url: str, metrics: str, model: str, requests, expected, args) -> tuple:
    in_flight = requests[:6]
    start = time.perf_counter()
    stop = lambda: process.send_signal(signal.SIGTERM)  # noqa: E731
    accepted = probe.accepted_requests(metrics, model)
    result = probe.during_shutdown(url, model, stop, in_flight, expected[:6], accepted, atol=args.atol)
    code = process.wait(timeout=120)
    answered = (
        f"in flight: {result.answered}/{result.in_flight} answered ({result.accepted} accepted by the server "
        "when SIGTERM was sent)"
    )
    if result.unanswered:
        answered += f" (others: {'; '.join(result.unanswered)})"
    return (
        "request during shutdown",
        result.new_request,
        f"{answered}; serve exited {code} after {time.perf_counter() - start:.1f} s",
    )


def run_mode(mode: str, bundle: Path, workdir: Path, requests, expected, reference_s, shape, args) -> None:
    flags = ["--max-batch", str(args.max_batch), "--max-queue-delay-us", str(args.delay_us)]
    flags += ["--instances", str(args.instances)]
    print(f"\n== {mode}")
    if mode == "repo":
        repo = workdir / "repo"
        subprocess.run(
            [sys.executable, "-m", "tokcompile.cli.main", "export-triton", str(bundle), str(repo), "-q", *flags],
            check=True,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
        )
        print(f"  tokcompile export-triton {bundle} {repo} {' '.join(flags)}")
        target, flags = repo, []
    else:
        target = bundle
    process, url, metrics, model = start_serve(target, workdir / f"{mode}.log", flags, args.ready_timeout)
    try:
        load_phase(url, model, requests, expected, reference_s, args)
        rows = fault_phase(url, model, shape, requests, expected, args)
        rows.append(shutdown_phase(process, url, metrics, model, requests, expected, args))
    finally:
        if process.poll() is None:
            process.kill()
    print("\n  | case | what the client got | server still serving? |")
    print("  |---|---|---|")
    for case, got, serving in rows:
        print(f"  | {case} | {got[:160]} | {serving} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--mode", choices=["serve", "repo", "both"], default="both")
    p.add_argument("--clients", type=int, default=4, help="K concurrent clients")
    p.add_argument("--requests", type=int, default=25, help="M requests per client")
    p.add_argument("--batch", default="1:8", help="images per request, LOW:HIGH (default 1:8)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--delay-us", type=int, default=1000, help="--max-queue-delay-us of the server")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--images", default=str(SAMPLE))
    p.add_argument("--deadline", type=float, default=600.0, help="stop sending load after this many seconds")
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args()
    low, high = (int(v) for v in args.batch.split(":"))
    runner = tokcompile.load(args.bundle)
    args.atol = probe.tolerance(runner.precision)
    manifest = runner.manifest
    shape = manifest.input_shape
    preprocess = preprocessing(manifest.model.timm_name, shape)
    pool = next(image_batches(args.images, preprocess, 64, limit=64))
    requests = probe.make_requests(pool, args.clients * args.requests, low, high, seed=0)
    print(
        f"{args.bundle}: {manifest.model.name} · {manifest.method.name} · {manifest.precision}, "
        f"{len(pool)} photos from {args.images}, {os.cpu_count()} CPU(s)"
    )
    print("in-process reference (tokcompile.load, each request alone) ...")
    probe.reference(runner, requests[:4])  # warm-up, as for the server
    expected, reference_s = probe.reference(runner, requests)
    del runner
    modes = ["serve", "repo"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for mode in modes:
            run_mode(mode, Path(args.bundle), Path(tmp), requests, expected, reference_s, shape, args)


if __name__ == "__main__":
    main()
