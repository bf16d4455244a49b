"""``tokcompile serve``: a real Triton server (nvidia-pytriton's tritonserver) on loopback.

One server per module for the ATS bundle (started as a user starts it, a child process): answers
equal ``tokcompile.load`` per request under concurrent dynamic batching, over HTTP and gRPC; fault
cases answered with errors while it keeps serving. A second, short-lived server checks the
graceful stop (in-flight requests answered, new ones refused). Bad input to ``serve`` itself:
one-line errors, exit 1, nothing left running.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_user_error, run
from serving import Served, alive, children, model_stats, sample_images, serve_cli

import tokcompile
from tokcompile.deploy import probe
from tokcompile.deploy.tritonserver import free_ports
from tokcompile.models.weights import file_sha256
from tokcompile.runtime.bundle import MANIFEST

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
pytest.importorskip("tritonclient.http")

MAX_BATCH = 4
SHAPE = (3, 160, 160)


@pytest.fixture(scope="module")
def ats_bundle(method_bundle) -> Path:
    return method_bundle("ats")


@pytest.fixture(scope="module")
def runner(ats_bundle):
    return tokcompile.load(ats_bundle)


@pytest.fixture(scope="module")
def server(ats_bundle: Path, tmp_path_factory) -> Served:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # A 20 ms queue delay makes concurrent requests share runs (checked from Triton's statistics).
    with serve_cli(ats_bundle, log, "--max-batch", str(MAX_BATCH), "--max-queue-delay-us", "20000") as served:
        yield served


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(24, 160)


def test_logs_say_model_backend_buckets_and_url(server: Served) -> None:
    text = server.output()
    assert f"serve: model '{server.model}'" in text and "test_vit · ats · fp32" in text
    assert "backend onnxruntime" in text  # what the instance actually runs, reported from inside
    assert "buckets after stage 0: 40,60,80;" in text
    assert f"HTTP http://{server.url}/v2/models/{server.model}/infer" in text and f"gRPC {server.grpc}" in text


def test_concurrent_requests_equal_in_process(server: Served, runner, images: np.ndarray) -> None:
    """4 clients × 6 requests of 1..2 real images: every answer equals the in-process runner on that
    request alone, though the server ran requests together (fewer runs than requests)."""
    before = model_stats(server.url, server.model)
    requests = probe.make_requests(images, 24, 1, MAX_BATCH // 2, seed=1)  # room to merge
    expected, _ = probe.reference(runner, requests)
    result = probe.run_load(server.url, server.model, requests, expected, clients=4, timeout_s=60)
    assert (result.sent, result.answered, result.failed, result.wrong) == (24, 24, 0, 0), result.errors
    assert result.worst_error <= probe.ATOL
    after = model_stats(server.url, server.model, at_least=before[0] + 24)
    answered, served_images, runs = (a - b for a, b in zip(after, before))
    assert (answered, served_images) == (24, sum(len(r) for r in requests))
    assert runs < answered, "dynamic batching never merged two requests"


def test_grpc(server: Served, runner, images: np.ndarray) -> None:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc)
    tensor = grpc.InferInput("images", [2, *SHAPE], "FP32")
    tensor.set_data_from_numpy(images[:2])
    result = client.infer(server.model, [tensor], client_timeout=60)
    expected = runner.run(images[:2])
    for name in ("logits", "features"):
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=0, atol=probe.ATOL)
    client.close()


@pytest.mark.parametrize("case", probe.FAULTS)
def test_fault_is_refused_and_the_server_keeps_serving(case: str, server: Served, runner, images) -> None:
    expected_error = {
        "wrong shape": "unexpected shape for input 'images'",
        "wrong dtype": "data-type is 'FP64', but model",
        "NaN input": "holds NaN or Inf values (image(s) [1] of 2)",
        "Inf input": "holds NaN or Inf values (image(s) [1] of 2)",
        "empty batch": "[400]",
        "batch above --max-batch": f"batch-size must be <= {MAX_BATCH}",
        "disconnect mid-request": "nothing (the client left)",
        "disconnect before the answer": "nothing (the client left)",
    }[case]
    got = probe.send_fault(case, server.url, server.model, SHAPE, MAX_BATCH)
    assert expected_error in got and got != "answered", got
    assert probe.still_serving(server.url, server.model, images[:3], runner.run(images[:3]))


def test_a_nan_request_does_not_fail_its_batch_mates(server: Served, runner, images: np.ndarray) -> None:
    """Sent together (20 ms queue delay), a NaN request and good ones may share a run: only the NaN
    one gets an error."""
    nan = images[:2].copy()
    nan[1, 0, 0, 0] = np.nan
    goods = [images[2:3], images[3:5], images[5:8]]
    got: dict[int, str] = {}

    def send(i: int, x: np.ndarray) -> None:
        got[i] = probe.outcome(server.url, server.model, x)

    threads = [threading.Thread(target=send, args=(i, x)) for i, x in enumerate([nan, *goods])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "NaN or Inf" in got[0]
    assert [got[i] for i in (1, 2, 3)] == ["answered"] * 3


def test_stop_answers_in_flight_and_refuses_new_requests(bundle, tmp_path: Path, images: np.ndarray) -> None:
    """SIGTERM with requests queued (a 300 ms batching delay keeps them queued): each is answered,
    a request after readiness dropped gets an error, the command exits 0 and stops tritonserver."""
    evit = bundle("test_vit")
    runner = tokcompile.load(evit)
    in_flight = [images[i : i + 2] for i in range(0, 8, 2)]
    expected, _ = probe.reference(runner, in_flight)
    with serve_cli(evit, tmp_path / "serve.log", "--max-batch", "16", "--max-queue-delay-us", "300000") as served:
        server_pids = [pid for pid, name in children(served.process.pid).items() if name == "tritonserver"]
        stop = lambda: served.process.send_signal(signal.SIGTERM)  # noqa: E731
        accepted = probe.accepted_requests(served.metrics, served.model)
        result = probe.during_shutdown(served.url, served.model, stop, in_flight, expected, accepted)
        code = served.process.wait(timeout=60)
    assert (result.in_flight, result.accepted, result.answered, result.unanswered) == (4, 4, 4, [])
    assert result.new_request != "answered"
    assert any(s in result.new_request for s in ("has no available versions", "Connection refused", "Errno")), result
    log = served.output()
    assert code == 0 and "serve: stopping" in log and "serve: stopped" in log and log.rstrip().endswith("s)")
    assert len(server_pids) == 1 and not alive(server_pids[0])


# ----------------------------------------------------------------------------- bad input to serve


def test_bad_input_to_serve(capsys, bundle, tmp_path: Path) -> None:
    evit = bundle("test_vit")
    http, grpc, metrics = free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    code, _, err = run(capsys, "serve", str(tmp_path), *ports, "-q")
    assert_user_error(code, err, "is not a tokcompile bundle")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(evit, corrupt)
    with open(corrupt / "model.onnx", "ab") as f:
        f.write(b"\0")
    code, _, err = run(capsys, "serve", str(corrupt), *ports, "-q")
    assert_user_error(code, err, "fails its sha256 check")
    code, _, err = run(capsys, "serve", str(evit), *ports, "--instances", "0", "-q")
    assert_user_error(code, err, "--instances must be ≥ 1, got 0")
    code, _, err = run(capsys, "serve", str(evit), *ports, "--max-batch", "0", "-q")
    assert_user_error(code, err, "--max-batch must be ≥ 1")
    code, _, err = run(capsys, "serve", str(evit), "--http-port", str(http), "--grpc-port", str(http), "-q")
    assert_user_error(code, err, "must differ")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grpc))
        busy.listen()
        code, _, err = run(capsys, "serve", str(evit), *ports, "-q")
    assert_user_error(code, err, rf"cannot serve on 127.0.0.1:{grpc} \(port in use\); choose another --grpc-port")
    assert "tritonserver" not in children().values()


def test_a_model_that_fails_to_load_in_the_server(capsys, bundle, tmp_path: Path) -> None:
    """A bundle that passes its hash check but that ONNX Runtime rejects: the server's reason in
    one line, exit 1, tritonserver gone."""
    broken = tmp_path / "broken"
    shutil.copytree(bundle("test_vit"), broken)
    model = onnx.load(str(broken / "model.onnx"))
    next(n for n in model.graph.node if n.op_type == "MatMul").op_type = "NoSuchOp"
    onnx.save(model, str(broken / "model.onnx"))
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["files"]["model.onnx"]["sha256"] = file_sha256(broken / "model.onnx")
    (broken / MANIFEST).write_text(json.dumps(manifest))
    http, grpc, metrics = free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    code, _, err = run(capsys, "serve", str(broken), *ports, "-q")
    assert_user_error(
        code, err, r"tritonserver exited \(code 1\): model .broken. failed to load: .*ONNX Runtime cannot load its ONNX"
    )
    assert "tritonserver" not in children().values()


def test_a_repository_sets_its_own_batching(capsys, bundle, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    tokcompile_repo = run(capsys, "export-triton", str(bundle("test_vit")), str(repo), "-q")
    assert tokcompile_repo[0] == 0
    code, _, err = run(capsys, "serve", str(repo), "--max-batch", "4", "-q")
    assert_user_error(code, err, "the repository's config.pbtxt sets --max-batch")
    assert "tritonserver" not in children().values()
