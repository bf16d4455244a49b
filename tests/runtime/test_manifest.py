"""Reading a bundle is strict: malformed manifests, paths outside the bundle and unhashed files
are one-line errors, never tracebacks or silently trusted files (issue: hostile input)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, run

import tokcompile
from tokcompile.runtime import bundle as bundle_io
from tokcompile.runtime.bundle import ManifestError


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
    (lambda m: m.pop("files"), "'files' must be a dict"),
    (lambda m: m.update(files=list(m["files"])), "'files' must be a dict"),
    (lambda m: m.pop("stages"), "'stages' must be a list"),
    (lambda m: m.update(stages=[]), "'stages' is empty"),
    (lambda m: m.pop("model"), "'model' must be a dict"),
    (lambda m: m.pop("tokens"), "'tokens' must be a dict"),
    (lambda m: m["model"].update(kwargs=[1, 2]), "'model.kwargs' must be a dict"),
    (lambda m: m["model"].update(input_shape=[3, "a", 160]), "model.input_shape"),
    (lambda m: m.update(precision="fp8"), "'precision' must be one of"),
    (lambda m: m["files"]["model.onnx"].pop("sha256"), "sha256' must be 64 lowercase hex"),
    (lambda m: m["files"].update({"../../etc/passwd": m["files"]["model.onnx"]}), "outside the bundle"),
    (lambda m: m["files"].update({"/etc/passwd": m["files"]["model.onnx"]}), "outside the bundle"),
    (lambda m: _stage(m).update(file="/etc/hostname"), "outside the bundle"),
    (lambda m: _stage(m).update(onnxruntime_file="../other/model.onnx"), "outside the bundle"),
    (lambda m: m["files"].pop("model.onnx"), "which 'files' does not list"),
    (lambda m: _stage(m).update(outputs="logits"), "outputs' must be a list"),
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
    bundle_io.validate_manifest(out, m)
    boundary = next(s for s in m["stages"] if s.get("count"))
    for change, message in [
        (lambda s: s.update(buckets="40,60"), "buckets' must be a list"),
        (lambda s: s.update(buckets=[40, -1]), "buckets' must hold integers"),
        (lambda s: s.update(count="count_renamed"), "count' names 'count_renamed', which is not one of its outputs"),
    ]:
        broken = json.loads(json.dumps(m))
        change(next(s for s in broken["stages"] if s["index"] == boundary["index"]))
        with pytest.raises(ManifestError, match=message):
            bundle_io.validate_manifest(out, broken)


def test_deeply_nested_and_non_object_json(copy_of):
    out = copy_of()
    (out / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(tokcompile.TokcompileError, match="not valid JSON|not a tokcompile bundle"):
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
