"""``tokcompile export-triton``: repository layout, config.pbtxt against Triton's real ModelConfig
schema and the ONNX files, the marker and --force, atomic writing with the user's umask, errors.
(A real tritonserver serving these repositories: test_tritonserver.py.)"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import onnx
import pytest
from cli_helpers import assert_user_error, run

from tokcompile import TokcompileError
from tokcompile.deploy import triton_client, triton_entry
from tokcompile.deploy.triton import MARKER, batching, read_repository, triton_repo_from_bundle, write_entry_model
from tokcompile.manifest import EngineEntry, EnginesRecord, Manifest
from tokcompile.runtime.bundle import MANIFEST, hash_files, read_manifest


def model_config_pb2() -> Any:
    """Triton's model-config schema as tritonclient ships it (the serve extra)."""
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


def parse_config(path: Path) -> Any:
    """config.pbtxt parsed with Triton's own ModelConfig message (a schema violation raises)."""
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())


def onnx_dims(bundle: Path, manifest: Manifest, output: str) -> list[int]:
    value = manifest.final_outputs[output]
    for stage in manifest.stages:
        for v in onnx.load(str(bundle / stage.file)).graph.output:
            if v.name == value:
                return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim[1:]]
    raise AssertionError(output)


@pytest.fixture(scope="module")
def evit_bundle(bundle) -> Path:
    return bundle("test_vit")


@pytest.fixture(scope="module")
def ats_bundle(method_bundle) -> Path:
    return method_bundle("ats")


@pytest.mark.parametrize("method", ["evit", "ats"])
def test_repository_layout_and_config(method: str, evit_bundle: Path, ats_bundle: Path, tmp_path: Path) -> None:
    source = evit_bundle if method == "evit" else ats_bundle
    repo = tmp_path / "models"
    record = triton_repo_from_bundle(source, repo, name="m", max_batch=8, max_queue_delay_us=2500, instances=3)
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "client.py", "m", MARKER]
    manifest = read_manifest(source)
    bundle_copy = repo / "m" / "1" / "bundle"
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["bundle", "model.py"]
    for name in [*manifest.files, MANIFEST]:
        assert (bundle_copy / name).read_bytes() == (source / name).read_bytes(), name
    assert (repo / "m" / "1" / "model.py").read_text() == Path(triton_entry.__file__).read_text()
    assert (repo / "client.py").read_text() == Path(triton_client.__file__).read_text()
    assert read_repository(repo) == record and record["model"] == "m"
    assert record["bundle"]["method"] == method and record["bundle"]["fingerprint"] == manifest.fingerprint

    config = parse_config(repo / "m" / "config.pbtxt")
    assert config.name == "m" and config.backend == "python" and config.max_batch_size == 8
    assert [(i.name, model_config_pb2().DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("images", "TYPE_FP32", [3, 160, 160])
    ]
    outputs = {o.name: (model_config_pb2().DataType.Name(o.data_type), list(o.dims)) for o in config.output}
    assert outputs == {
        "logits": ("TYPE_FP32", onnx_dims(source, manifest, "logits")),
        "features": ("TYPE_FP32", onnx_dims(source, manifest, "features")),
    }
    assert outputs["logits"][1] == [1000] and outputs["features"][1] == [64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert [(g.count, model_config_pb2().ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (3, "KIND_CPU")
    ]
    assert config.parameters["bundle"].string_value == "bundle"
    readme = (repo / "README.md").read_text()
    assert (
        "tokcompile serve ." in readme and "LD_LIBRARY_PATH" in readme and "tritonserver --model-repository" in readme
    )


def test_defaults(evit_bundle: Path, tmp_path: Path) -> None:
    triton_repo_from_bundle(evit_bundle, tmp_path / "models")
    name = evit_bundle.name
    config = parse_config(tmp_path / "models" / name / "config.pbtxt")
    assert config.name == name and config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000 and config.instance_group[0].count == 1


def test_serve_refers_to_the_bundle_in_place(ats_bundle: Path, tmp_path: Path) -> None:
    """The model ``tokcompile serve`` writes for a bundle: the same config, the bundle by absolute path."""
    manifest = read_manifest(ats_bundle)
    write_entry_model(tmp_path / "m", "m", ats_bundle, manifest, batching(4, 0, 2, manifest), copy_bundle=False)
    config = parse_config(tmp_path / "m" / "config.pbtxt")
    assert config.parameters["bundle"].string_value == str(ats_bundle.resolve())
    assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (4, 0)
    assert config.instance_group[0].count == 2
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == ["model.py"]


def test_client_has_no_stage_loop() -> None:
    """The example client sends images; staging lives on the server only."""
    source = Path(triton_client.__file__).read_text()
    for word in ("bucket", "fit_tokens", "pipeline", "stage"):
        assert word not in source, word


# ----------------------------------------------------------------------------- a TensorRT bundle


def fake_tensorrt_bundle(evit_bundle: Path, directory: Path) -> Path:
    """The EViT bundle with the fields backends/tensorrt.py records and a stand-in engine (no
    TensorRT here; the exporter copies the bundle and reads the profiles' batch range)."""
    manifest = read_manifest(evit_bundle)
    directory.mkdir()
    stage = manifest.stages[0]
    shutil.copyfile(evit_bundle / stage.file, directory / stage.file)
    (directory / "model.trt10.13-sm90.engine").write_bytes(b"engine")
    shapes = {"images": [[1, 3, 160, 160], [16, 3, 160, 160], [32, 3, 160, 160]]}
    profiles = [{"bucket": "fallback", "shapes": shapes}, {"bucket": 1, "shapes": shapes}]
    stage.engine = EngineEntry("model.trt10.13-sm90.engine", profiles)
    manifest.backend, manifest.stages = "tensorrt", [stage]
    manifest.tensorrt = EnginesRecord("tensorrt", "10.13.0.35", 32, 16)
    manifest.files = hash_files(directory, [p.name for p in directory.iterdir()])
    (directory / MANIFEST).write_text(manifest.to_json())
    return directory


def test_tensorrt_bundle(evit_bundle: Path, tmp_path: Path) -> None:
    trt_bundle = fake_tensorrt_bundle(evit_bundle, tmp_path / "trt-bundle")
    triton_repo_from_bundle(trt_bundle, tmp_path / "models", name="m")
    config = parse_config(tmp_path / "models" / "m" / "config.pbtxt")
    assert config.max_batch_size == 16  # the default, under the engines' 32
    assert model_config_pb2().ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert (tmp_path / "models" / "m" / "1" / "bundle" / "model.trt10.13-sm90.engine").read_bytes() == b"engine"
    triton_repo_from_bundle(trt_bundle, tmp_path / "m32", max_batch=32)
    assert parse_config(tmp_path / "m32" / trt_bundle.name / "config.pbtxt").max_batch_size == 32
    with pytest.raises(TokcompileError, match="--max-batch 33 exceeds the 32 images"):
        triton_repo_from_bundle(trt_bundle, tmp_path / "m33", max_batch=33)
    # tokcompile serve without a GPU: CPU instances (the runner falls back to the ONNX files).
    manifest = read_manifest(trt_bundle)
    assert batching(manifest=manifest).kind == "KIND_GPU" and batching(manifest=manifest, gpu=False).kind == "KIND_CPU"
    assert batching(manifest=read_manifest(evit_bundle)).kind == "KIND_CPU"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m32", "models", "trt-bundle"]  # nothing half-written


def test_only_built_engines_bound_the_batch(evit_bundle: Path, tmp_path: Path) -> None:
    """Every bundle plans TensorRT profiles (up to 64 images, for report.md's commands); only a
    TensorRT bundle's built engines cap --max-batch, an ONNX Runtime bundle takes any batch."""
    manifest = read_manifest(evit_bundle)
    assert manifest.backend == "onnxruntime" and manifest.stages[0].engine is None
    assert manifest.stages[0].tensorrt_plan[0]["shapes"]["images"][2][0] == 64  # the planned max batch
    assert batching(100, manifest=manifest).max_batch == 100
    triton_repo_from_bundle(evit_bundle, tmp_path / "m100", max_batch=100)
    assert parse_config(tmp_path / "m100" / evit_bundle.name / "config.pbtxt").max_batch_size == 100
    trt_manifest = read_manifest(fake_tensorrt_bundle(evit_bundle, tmp_path / "trt-bundle"))  # engines: 32, plan: 64
    assert batching(32, manifest=trt_manifest).max_batch == 32
    with pytest.raises(TokcompileError, match="--max-batch 33 exceeds the 32 images the bundle's TensorRT engines"):
        batching(33, manifest=trt_manifest)


# ----------------------------------------------------------------------------- --force, umask, errors


def test_force_replaces_only_a_tokcompile_repository(capsys, evit_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    code, out, _ = run(capsys, "export-triton", str(evit_bundle), str(repo), "-q")
    assert code == 0 and out.splitlines()[-1].startswith("PASSED")
    code, _, err = run(capsys, "export-triton", str(evit_bundle), str(repo), "-q")
    assert_user_error(code, err, "holds a different Triton repository .*pass --force to replace it")
    # A file the user added inside it is theirs: not even --force deletes it.
    (repo / "extra").write_text("mine")
    code, _, err = run(capsys, "export-triton", str(evit_bundle), str(repo), "--force", "-q")
    assert_user_error(code, err, r"also holds files tokcompile did not write \(extra\)")
    assert (repo / "extra").read_text() == "mine"
    (repo / "extra").unlink()
    code, _, _ = run(capsys, "export-triton", str(evit_bundle), str(repo), "--force", "-q")
    assert code == 0 and (repo / MARKER).is_file()
    # A user's folder (no marker) is never replaced, --force or not.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, "export-triton", str(evit_bundle), str(user), *extra, "-q")
        assert_user_error(code, err, "tokcompile did not write .*even with --force")
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    # An empty folder holds nothing to lose.
    (tmp_path / "empty").mkdir()
    code, _, _ = run(capsys, "export-triton", str(evit_bundle), str(tmp_path / "empty"), "-q")
    assert code == 0 and (tmp_path / "empty" / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokcompile-")]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_modes_follow_the_umask(mask: int, evit_bundle: Path, tmp_path: Path) -> None:
    old = os.umask(mask)
    try:
        triton_repo_from_bundle(evit_bundle, tmp_path / "models")
    finally:
        os.umask(old)
    paths = [tmp_path / "models", *(tmp_path / "models").rglob("*")]
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))


def test_unwritable_parent(capsys, evit_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "export-triton", str(evit_bundle), str(tmp_path / "file" / "models"), "-q")
    assert_user_error(code, err, "REPO .* is inside .*file', which is a file, not a folder")

    def denied(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    code, _, err = run(capsys, "export-triton", str(evit_bundle), str(tmp_path / "models"), "-q")
    assert_user_error(code, err, "cannot create REPO .*Permission denied; choose a writable location")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bad_input(capsys, evit_bundle: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "export-triton", str(tmp_path / "nope"), str(tmp_path / "models"), "-q")
    assert_user_error(code, err, "is not a tokcompile bundle")
    for flag, value, message in (
        ("--max-batch", "0", "--max-batch must be ≥ 1"),
        ("--instances", "0", "--instances must be ≥ 1"),
        ("--max-queue-delay-us", "-1", "--max-queue-delay-us must be ≥ 0"),
    ):
        code, _, err = run(capsys, "export-triton", str(evit_bundle), str(tmp_path / "models"), flag, value, "-q")
        assert_user_error(code, err, message)
    with pytest.raises(TokcompileError, match="must not be the bundle"):
        triton_repo_from_bundle(evit_bundle, evit_bundle.parent, force=True)
    assert (evit_bundle / MANIFEST).is_file()
    assert not (tmp_path / "models").exists()
