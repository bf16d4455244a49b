"""Reading a bundle is strict: malformed manifests, paths outside the bundle and unhashed files
are one-line errors, never tracebacks or silently trusted files (issue: hostile input)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, run

import tokcompile
from tokcompile.manifest import Manifest, ManifestError
from tokcompile.runtime import bundle as bundle_io


@pytest.fixture
def copy_of(bundle, tmp_path) -> Callable[..., Path]:
    def make(method: str = "evit", **params) -> Path:
        out = tmp_path / f"b-{method}"
        shutil.copytree(bundle("test_vit", method=method, **params), out)
        return out

    return make


def edit(directory: Path, change: Callable[[dict], object]) -> None:
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def _stage(m: dict) -> dict:
    return m["stages"][0]


CASES = [
    (lambda m: m.pop("files"), "'files' is missing"),
    (lambda m: m.update(files=list(m["files"])), "'files' must be an object, got list"),
    (lambda m: m.pop("stages"), "'stages' is missing"),
    (lambda m: m.update(stages=[]), "'stages' is empty"),
    (lambda m: m.pop("model"), "'model' is missing"),
    (lambda m: m.pop("tokens"), "'tokens' is missing"),
    (lambda m: m["model"].update(kwargs=[1, 2]), "'model.kwargs' must be an object, got list"),
    (lambda m: m["model"].update(input_shape=[3, "a", 160]), r"'model.input_shape\[1\]' must be an integer"),
    (lambda m: m.update(precision="fp8"), "'precision' must be one of"),
    (lambda m: m["files"]["model.onnx"].pop("sha256"), "'files.model.onnx.sha256' is missing"),
    (lambda m: m["files"]["model.onnx"].update(sha256="XYZ"), "sha256' must be 64 lowercase hex"),
    (lambda m: m["gmacs"].update(dense=float("nan")), "'gmacs.dense' must be a finite number"),
    (lambda m: m["weights"].update(surprise=1), r"'weights' has unknown field\(s\) surprise"),
    (lambda m: m["files"].update({"../../etc/passwd": m["files"]["model.onnx"]}), "outside the bundle"),
    (lambda m: m["files"].update({"/etc/passwd": m["files"]["model.onnx"]}), "outside the bundle"),
    (lambda m: _stage(m).update(file="/etc/hostname"), "outside the bundle"),
    (lambda m: _stage(m).update(onnxruntime_file="../other/model.onnx"), "outside the bundle"),
    (lambda m: m["files"].pop("model.onnx"), "which 'files' does not list"),
    (lambda m: _stage(m).update(outputs="logits"), "'stages\\[0\\].outputs' must be a list"),
    (lambda m: m.update(final_outputs={"logits": "renamed"}), "no stage outputs"),
]


@pytest.mark.parametrize("change, message", CASES)
def test_malformed_manifests_are_one_line_errors(copy_of, change, message):
    out = copy_of()
    edit(out, change)
    with pytest.raises(ManifestError, match=message):
        bundle_io.read_manifest(out)


def test_staged_manifest_fields(copy_of):
    out = copy_of("ats", buckets="40,60,80")
    m = json.loads((out / "manifest.json").read_text())
    Manifest.from_json(m, str(out))
    boundary = next(i for i, s in enumerate(m["stages"]) if s.get("count"))
    for change, message in [
        (lambda s: s.update(buckets="40,60"), "buckets' must be a list"),
        (lambda s: s.update(buckets=[40, -1]), "buckets' must hold positive token counts"),
        (lambda s: s.update(count="count_renamed"), "count' names 'count_renamed', which is not one of its outputs"),
    ]:
        broken = json.loads(json.dumps(m))
        change(broken["stages"][boundary])
        with pytest.raises(ManifestError, match=message):
            Manifest.from_json(broken, str(out))


HERE = Path(__file__).parent


@pytest.mark.parametrize("name", ["v1_ats.json", "v1_tensorrt_rtx.json"])
def test_version_1_manifests_read(name):
    """Real version-1 manifests (written by earlier tokcompile builds) upgrade in memory."""
    data = json.loads((HERE / "manifests" / name).read_text())
    assert data["format_version"] == 1
    m = Manifest.from_json(data, name)
    assert m.format_version == 2 and m.stages and m.files
    if name == "v1_ats.json":
        assert m.staged and m.tokens.staged and m.tokens.warnings and "RANDOM-noise" in m.tokens.warnings[0]
        assert all(s.buckets == [60, 80] for s in m.stages if s.count)
    else:
        engine = m.stages[0].engine
        assert engine is not None and engine.file == data["stages"][0]["tensorrt_file"]
        assert engine.profiles == data["stages"][0]["tensorrt_profiles"] and engine.layers > 0
        assert m.tensorrt.flavour == "tensorrt-rtx" and m.tensorrt.target_sm == [80]
    assert json.loads(m.to_json())["format_version"] == 2  # written back as version 2


def test_a_version_1_bundle_still_loads_and_runs(copy_of):
    """A bundle whose manifest is in the version-1 layout runs as it did."""
    out = copy_of("ats", buckets="40,60,80")
    images = np.random.default_rng(0).standard_normal((3, 3, 160, 160), dtype=np.float32)
    expected = tokcompile.load(out).run(images)
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 1
    m["tokens"]["warning"] = " ".join(m["tokens"].pop("warnings"))
    for s in m["stages"]:
        s["input"] = s["inputs"][0]
    (out / "manifest.json").write_text(json.dumps(m))
    got = tokcompile.load(out).run(images)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_the_writer_and_the_reader_agree(copy_of):
    out = copy_of("ats", buckets="40,60,80")
    m = bundle_io.read_manifest(out)
    assert Manifest.from_json(json.loads(m.to_json()), "again") == m
    assert json.loads(m.to_json()) == json.loads((out / "manifest.json").read_text())


def test_deeply_nested_and_non_object_json(copy_of):
    out = copy_of()
    (out / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(tokcompile.TokcompileError, match="manifest.json' is not valid JSON .*rebuild the bundle"):
        bundle_io.read_manifest(out)
    (out / "manifest.json").write_text("[1, 2]")
    with pytest.raises(tokcompile.TokcompileError, match="is not a tokcompile bundle"):
        bundle_io.read_manifest(out)


def test_symlink_escaping_the_bundle_is_refused(copy_of, tmp_path):
    out = copy_of()
    outside = tmp_path / "outside.onnx"
    shutil.move(out / "model.onnx", outside)
    (out / "model.onnx").symlink_to(outside)
    with pytest.raises(ManifestError, match="resolves outside the bundle"):
        bundle_io.read_manifest(out)


def test_cli_commands_refuse_a_tampered_manifest(copy_of, capsys):
    out = copy_of()
    edit(out, lambda m: m["files"].update({"../../etc/passwd": m["files"]["model.onnx"]}))
    for command in ("inspect", "bench", "compare"):
        code, stdout, err = run(capsys, command, str(out))
        assert_user_error(code, err, "outside the bundle")
        assert "sha256 verified" not in stdout and "FAILED" in stdout
