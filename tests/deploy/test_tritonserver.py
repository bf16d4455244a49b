"""Exported repositories on the real ``tritonserver`` binary and Python backend of nvidia-pytriton
(``tritonserver --model-repository ... --backend-directory ...``, loopback, free ports): one
server for the module holds an EViT (static) and an ATS (staged, buckets) repository, a second
one an AdaViT repository (staged, extra dims cut per batch; the suite's shared AdaViT bundle).
Clients send plain images (the repository's client.py); answers equal ``tokcompile.load`` per
request under concurrent dynamic batching: the server runs the in-process stage loop, there is
no second copy to diverge."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serving import model_stats, sample_images

import tokcompile
from tokcompile.deploy import probe
from tokcompile.deploy.triton import triton_repo_from_bundle
from tokcompile.deploy.tritonserver import TritonServer, endpoints, find_server, free_ports, server_environment

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
pytest.importorskip("tritonclient.http")

MAX_BATCH = 8  # requests of 1..4 images leave room to merge them


@pytest.fixture(scope="module")
def bundles(bundle, method_bundle) -> dict[str, Path]:
    return {"evit": bundle("test_vit"), "ats": method_bundle("ats")}


@pytest.fixture(scope="module")
def repos(bundles: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repos")
    return {
        method: Path(root / method)
        for method, source in bundles.items()
        if triton_repo_from_bundle(source, root / method, name=method, max_batch=MAX_BATCH, max_queue_delay_us=20000)
    }


@pytest.fixture(scope="module")
def server(repos: dict[str, Path], tmp_path_factory):
    ends = endpoints("127.0.0.1", *free_ports(3))
    server = TritonServer(list(repos.values()), ends, tmp_path_factory.mktemp("server"))
    with server:
        yield server


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(24, 160)


def test_the_raw_binary_serves_the_repositories(server: TritonServer, repos: dict[str, Path]) -> None:
    dist = find_server()
    backends = server.workdir / "backends"
    command = server.command(backends)
    assert command[0] == str(dist.binary) and f"--backend-directory={backends}" in command
    assert [c for c in command if c.startswith("--model-repository=")] == [
        f"--model-repository={r.resolve()}" for r in repos.values()
    ]
    for name in repos:
        with urllib.request.urlopen(f"http://{server.ends.http}/v2/models/{name}/config", timeout=10) as r:
            config = json.loads(r.read())
        assert config["backend"] == "python" and config["max_batch_size"] == MAX_BATCH
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000


def test_environment_points_the_stub_at_this_python() -> None:
    """The stub must load this interpreter's libpython, not the system's, and import this tokcompile."""
    env = server_environment(find_server())
    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")
    assert env["PYTHONPATH"].split(":")[0] == str(Path(tokcompile.__file__).resolve().parents[1])


def check_concurrent_requests(server: TritonServer, model: str, source: Path, images: np.ndarray) -> None:
    """4 clients × 4 requests of 1..4 images (max batch 8): each answer equals the in-process runner on that
    request alone, and requests did share runs."""
    runner = tokcompile.load(source)
    requests = probe.make_requests(images, 16, 1, MAX_BATCH // 2, seed=2)
    expected, _ = probe.reference(runner, requests)
    before = model_stats(server.ends.http, model)
    result = probe.run_load(server.ends.http, model, requests, expected, clients=4, timeout_s=60)
    assert (result.sent, result.answered, result.failed, result.wrong) == (16, 16, 0, 0), result.errors
    after = model_stats(server.ends.http, model, at_least=before[0] + 16)
    answered, served_images, runs = (a - b for a, b in zip(after, before))
    assert (answered, served_images) == (16, sum(len(r) for r in requests))
    assert runs < answered, "no two requests shared a run"


@pytest.mark.parametrize("method", ["evit", "ats"])
def test_concurrent_requests_equal_in_process(method: str, server, bundles, images: np.ndarray) -> None:
    check_concurrent_requests(server, method, bundles[method], images)


@pytest.mark.slow  # a server (or sweep) of its own
def test_adavit_extra_dims_on_the_server(method_bundle, images: np.ndarray, tmp_path: Path) -> None:
    """AdaViT cuts its kept-head and MLP-row tensors to each batch's largest count (extra dims),
    which the old client-side stage loop lacked; served, it runs the in-process loop."""
    source = method_bundle("adavit")
    triton_repo_from_bundle(source, tmp_path / "repo", name="adavit", max_batch=MAX_BATCH, max_queue_delay_us=20000)
    with TritonServer([tmp_path / "repo"], endpoints("127.0.0.1", *free_ports(3)), tmp_path) as server:
        check_concurrent_requests(server, "adavit", source, images)


def test_repository_client(server, repos, bundles, images: np.ndarray) -> None:
    """client.py, as copied into the repository: a plain tritonclient call, no staging."""
    spec = importlib.util.spec_from_file_location("repo_client", repos["ats"] / "client.py")
    client_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client_module)
    import tritonclient.http as http

    client = http.InferenceServerClient(server.ends.http)
    got = client_module.infer(client, "ats", images[:3])
    expected = tokcompile.load(bundles["ats"]).run(images[:3])
    for name in ("logits", "features"):
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=probe.ATOL)
    client.close()
    out = subprocess.run(
        [sys.executable, str(repos["ats"] / "client.py"), "--random", "2", "--url", server.ends.http],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "logits: float32 [2, 1000]" in out and "features: float32 [2, 64]" in out and "top-1:" in out
