"""``tokcompile export-triton``: repository layout, config.pbtxt against the ONNX files, the
client-side stage loop (equal to ``tokcompile.load``), a TensorRT bundle's config, error paths."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tokcompile
from tokcompile import TokcompileError
from tokcompile.cli.main import main
from tokcompile.export import triton_client
from tokcompile.export.triton import triton_repo_from_bundle
from tokcompile.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, hash_files

ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


# ----------------------------------------------------------------------------- a small pbtxt reader


def _tokens(text: str) -> list[str]:
    return re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format (the subset config.pbtxt uses) → {field: [values]} (repeated-safe)."""
    toks = _tokens(text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while toks[pos] != "]":
                items.append(value())
                if toks[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return json.loads(tok)
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        out: dict[str, list[Any]] = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            pos += 1
            if toks[pos] == ":":
                pos += 1
            v = value()
            out.setdefault(key, []).extend(v if isinstance(v, list) else [v])  # `key: [a, b]` is repeated
        pos += 1
        return out

    return message(None)


def _real_model_config() -> Any:
    """tritonclient's generated ModelConfig message, if tritonclient is installed (loaded by path:
    ``tritonclient.grpc`` itself needs grpcio)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.ModelConfig


def check_config(config_path: Path, onnx_path: Path, platform: str) -> dict[str, list[Any]]:
    """config.pbtxt names, data types and dims match the ONNX file's inputs and outputs."""
    text = config_path.read_text()
    config = parse_pbtxt(text)
    assert config["name"] == [config_path.parent.name]
    assert config["platform"] == [platform]
    (max_batch,) = config["max_batch_size"]
    assert max_batch > 0  # every stage has a shared symbolic batch dimension
    model = onnx.load(str(onnx_path))
    for key, values in (("input", model.graph.input), ("output", model.graph.output)):
        entries = config[key]
        assert [e["name"][0] for e in entries] == [v.name for v in values]
        for entry, v in zip(entries, values):
            t = v.type.tensor_type
            assert entry["data_type"] == [ONNX_TO_TRITON[t.elem_type]], v.name
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            assert dims[0] == -1
            if len(dims) == 1:  # [batch] → dims [1] reshaped to [] (Triton rejects empty dims)
                assert entry["dims"] == [1] and entry["reshape"] == [{"shape": []}], v.name
            else:
                assert entry["dims"] == dims[1:] and "reshape" not in entry, v.name
    real = _real_model_config()
    if real is not None:
        from google.protobuf import text_format

        parsed = text_format.Parse(text, real())
        assert parsed.name == config_path.parent.name and parsed.max_batch_size == max_batch
    return config


def ort_infer(repo: Path) -> triton_client.Infer:
    sessions: dict[str, ort.InferenceSession] = {}

    def infer(model: str, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        if model not in sessions:
            sessions[model] = ort.InferenceSession(
                str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
        return sessions[model].run(outputs, feed)

    return infer


def images(n: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, 3, 160, 160), dtype=np.float32)


# ----------------------------------------------------------------------------- ONNX bundles


@pytest.fixture(scope="module")
def evit_bundle(bundle) -> Path:
    return bundle("test_vit")


@pytest.fixture(scope="module")
def ats_bundle(bundle) -> Path:
    return bundle("test_vit", method="ats", buckets="40,60,80")


def test_single_stage_repository(evit_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    pipeline = triton_repo_from_bundle(evit_bundle, repo, name="deit_evit")
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "client.py", "deit_evit", "pipeline.json"]
    assert sorted(str(p.relative_to(repo / "deit_evit")) for p in (repo / "deit_evit").rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    manifest = tokcompile.load(evit_bundle).manifest
    source = evit_bundle / manifest["stages"][0]["file"]
    assert (repo / "deit_evit" / "1" / "model.onnx").read_bytes() == source.read_bytes()
    config = check_config(repo / "deit_evit" / "config.pbtxt", source, "onnxruntime_onnx")
    assert config["max_batch_size"] == [16] and "instance_group" not in config
    assert json.loads((repo / "pipeline.json").read_text()) == pipeline
    assert [s["model"] for s in pipeline["stages"]] == ["deit_evit"]
    assert (repo / "client.py").read_text() == Path(triton_client.__file__).read_text()
    x = images(2)
    got = triton_client.run_pipeline(x, ort_infer(repo), pipeline)
    expected = tokcompile.load(evit_bundle).run(x)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_staged_repository_and_client_loop(ats_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    pipeline = triton_repo_from_bundle(ats_bundle, repo)
    manifest = tokcompile.load(ats_bundle).manifest
    base = ats_bundle.name
    names = [f"{base}_stage{s['index']}" for s in manifest["stages"]]
    assert [s["model"] for s in pipeline["stages"]] == names and len(names) == 5
    for stage, name in zip(manifest["stages"], names):
        check_config(repo / name / "config.pbtxt", ats_bundle / stage["file"], "onnxruntime_onnx")
    counts = [s for s in pipeline["stages"] if s["count"]]
    assert len(counts) == 4 and all(s["buckets"] == [40, 60, 80] for s in counts)
    assert all(s["count"] in s["reshaped"] for s in counts)  # [batch] count outputs
    readme = (repo / "README.md").read_text()
    assert "client-side" in readme and "ensemble" in readme and "LD_PRELOAD" not in readme  # ONNX: no plugin
    # The client's stage loop (bucket choice, cut/pad) gives what the in-process runner gives.
    infer = ort_infer(repo)
    widths: list[int] = []

    def recording(model: str, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        widths.extend(v.shape[1] for n, v in feed.items() if model != names[0] and v.ndim >= 2)
        return infer(model, feed, outputs)

    for batch in (1, 4):
        x = images(batch)
        got = triton_client.run_pipeline(x, recording, pipeline)
        expected = tokcompile.load(ats_bundle).run(x)
        assert list(got) == list(expected)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"batch {batch}: {name}")
    # a bucket, or above every bucket the batch's own count; never padded to the full 101
    assert all(w in (40, 60, 80) or 80 < w < 101 for w in widths), widths


def test_client_helpers_match_the_runtime() -> None:
    from tokcompile.runtime.buckets import pick_bucket
    from tokcompile.runtime.staged import fit_tokens

    for count in (1, 40, 41, 80, 99, 120):
        assert triton_client.pick_bucket(count, [40, 60, 80, 101]) == pick_bucket(count, [40, 60, 80, 101])
    for value in (np.ones((2, 5, 3), np.float32), np.ones((2, 5), bool), np.arange(10).reshape(2, 5)):
        for n in (3, 5, 8):
            np.testing.assert_array_equal(triton_client.fit_tokens(value, n), fit_tokens(value, n))


# ----------------------------------------------------------------------------- a TensorRT bundle


def fake_tensorrt_bundle(evit_bundle: Path, directory: Path) -> Path:
    """The EViT bundle's ONNX file with the fields backends/tensorrt.py records, a stand-in engine
    and plugin library (no TensorRT here; the exporter only copies them)."""
    manifest = json.loads((evit_bundle / MANIFEST).read_text())
    directory.mkdir()
    stage = manifest["stages"][0]
    shutil.copyfile(evit_bundle / stage["file"], directory / stage["file"])
    (directory / "model.trt10.13-sm90.engine").write_bytes(b"engine")
    (directory / "libtokcompile_plugins.so").write_bytes(b"elf")
    shapes = {"images": [[1, 3, 160, 160], [16, 3, 160, 160], [32, 3, 160, 160]]}
    stage.update(
        tensorrt_file="model.trt10.13-sm90.engine",
        tensorrt_profiles=[{"bucket": "fallback", "shapes": shapes}, {"bucket": "fallback", "shapes": shapes}],
        plugin_nodes={"EvitSelect": 3},
    )
    manifest.update(
        backend="tensorrt",
        stages=[stage],
        tensorrt={"version": "10.13.0.35", "plugin_library": {"file": "libtokcompile_plugins.so", "sha256": "0"}},
    )
    manifest["files"] = hash_files(directory, [p.name for p in directory.iterdir()])
    assert manifest["format"] == FORMAT and manifest["format_version"] == FORMAT_VERSION
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_tensorrt_repository(evit_bundle: Path, tmp_path: Path) -> None:
    trt_bundle = fake_tensorrt_bundle(evit_bundle, tmp_path / "trt-bundle")
    repo = tmp_path / "models"
    triton_repo_from_bundle(trt_bundle, repo, name="m")
    assert (repo / "m" / "1" / "model.plan").read_bytes() == b"engine"
    assert (repo / "libtokcompile_plugins.so").read_bytes() == b"elf"
    config = check_config(repo / "m" / "config.pbtxt", trt_bundle / "model.onnx", "tensorrt_plan")
    assert config["max_batch_size"] == [32]  # the largest batch every profile accepts
    assert config["instance_group"] == [{"kind": ["KIND_GPU"], "profile": ["0", "1"]}]
    readme = (repo / "README.md").read_text()
    assert "LD_PRELOAD=$PWD/libtokcompile_plugins.so tritonserver --model-repository=$PWD" in readme
    assert "--backend-config=tensorrt,plugins=$PWD/libtokcompile_plugins.so" in readme


# ----------------------------------------------------------------------------- errors


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_and_refuses_to_overwrite(capsys, evit_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    code, out, _ = _run(capsys, "export-triton", str(evit_bundle), str(repo), "-q")
    assert code == 0 and out.splitlines()[-1].startswith("PASSED")
    assert (repo / evit_bundle.name / "config.pbtxt").is_file()
    (repo / "marker").write_text("old")
    code, out, err = _run(capsys, "export-triton", str(evit_bundle), str(repo), "-q")
    assert code == 1 and err.strip().count("\n") == 0
    assert err.startswith(f"tokcompile: error: '{repo}' exists; choose another REPO or pass --force")
    assert (repo / "marker").is_file()
    code, _, _ = _run(capsys, "export-triton", str(evit_bundle), str(repo), "--force", "-q")
    assert code == 0 and not (repo / "marker").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokcompile-")]


def test_cli_bundle_not_found(capsys, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "export-triton", str(tmp_path / "nope"), str(tmp_path / "models"), "-q")
    assert code == 1 and err.strip().count("\n") == 0
    assert "is not a tokcompile bundle" in err
    assert not (tmp_path / "models").exists()


def test_repo_must_not_hold_the_bundle(evit_bundle: Path) -> None:
    with pytest.raises(TokcompileError, match="must not be the bundle"):
        triton_repo_from_bundle(evit_bundle, evit_bundle, force=True)
    with pytest.raises(TokcompileError, match="must not be the bundle"):
        triton_repo_from_bundle(evit_bundle, evit_bundle.parent, force=True)
    assert (evit_bundle / MANIFEST).is_file()


def test_failure_leaves_nothing(evit_bundle: Path, tmp_path: Path) -> None:
    """A TensorRT bundle without its engine: one-line error, no repository, no temporary folder."""
    trt_bundle = fake_tensorrt_bundle(evit_bundle, tmp_path / "trt-bundle")
    (trt_bundle / "model.trt10.13-sm90.engine").unlink()
    with pytest.raises(TokcompileError, match="is missing .model.trt10.13-sm90.engine.; rebuild it"):
        triton_repo_from_bundle(trt_bundle, tmp_path / "models")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt-bundle"]
