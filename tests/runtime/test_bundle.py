"""Bundle files, manifest, atomic writing and refusal rules."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import tokcompile
from tokcompile.runtime import bundle as bundle_io
from tokcompile.runtime.reference import rebuild


def test_manifest_records_what_the_issue_lists(bundle):
    out = bundle("test_vit")
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["timm_name"] == "test_vit"
    assert m["weights"]["source"] == "file" and len(m["weights"]["sha256"]) == 64
    assert m["method"] == {
        "name": "evit",
        "params": {"keep_rate": 0.7, "layers": [2, 3, 4], "fuse": True},
        "warnings": [],
    }
    assert m["tokens"]["sequence"] == [101, 72, 52, 38]
    assert m["precision"] == "fp32"
    assert set(m["files"]) == {"model.onnx", "engines.sh", "report.md"}
    for name, entry in m["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert {"torch", "timm", "onnx", "onnxruntime", "tokcompile"} <= set(m["versions"])
    assert 1.0 < m["gmacs"]["ideal_speedup"] < 2.0
    assert m["gmacs"]["dense"] / m["gmacs"]["reduced"] == pytest.approx(m["gmacs"]["ideal_speedup"], rel=1e-3)
    assert "101 → 72 → 52 → 38" in (out / "report.md").read_text()


# DeiT-T (197 tokens, 12 blocks: top-k over more, closer scores) builds in ~20 s: slow run
@pytest.mark.parametrize("name", ["test_vit", pytest.param("deit_t", marks=pytest.mark.slow)])
def test_bundle_matches_pytorch_reference(bundle, name):
    """ORT bundle vs the eager reduced model: |Δlogits| ≤ 1e-4, identical kept tokens."""
    out = bundle(name)
    runner = tokcompile.load(out)
    gm, spec, _ = rebuild(runner.manifest)
    x = np.random.default_rng(3).standard_normal((4, *spec.input_shape), dtype=np.float32)
    got = runner.run(x)
    with torch.no_grad():
        ref = gm(torch.from_numpy(x))
    assert np.abs(got["logits"] - ref[0].numpy()).max() <= 1e-4
    assert runner(x).shape == (4, spec.num_classes)
    assert list(got) == runner.manifest.stages[0].outputs
    assert list(got)[:2] == ["logits", "features"] and len(got) == 5
    for name_, r in zip(got, ref):
        if name_.startswith("kept_ids_"):
            np.testing.assert_array_equal(got[name_], r.numpy())
        else:
            assert np.abs(got[name_] - r.numpy()).max() <= 1e-4


def test_bf16_bundle_carries_fp32_twin_for_onnxruntime(bundle, caplog):
    out = bundle("test_vit", precision="bf16")
    m = json.loads((out / "manifest.json").read_text())
    stage = m["stages"][0]
    assert stage["file"] == "model.onnx" and stage["onnxruntime_file"] == "model.fp32.onnx"
    assert stage["onnxruntime_precision"] == "fp32" and stage["onnxruntime_note"]
    assert "model.fp32.onnx" in m["files"]
    import onnx

    types = {i.data_type for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.BFLOAT16 in types
    with caplog.at_level("WARNING", logger="tokcompile"):
        runner = tokcompile.load(out)
    assert runner.precision == "fp32"
    assert "fp32 twin" in caplog.text


def test_fp16_bundle_runs_fp16_in_onnxruntime(bundle):
    out = bundle("test_vit", precision="fp16")
    runner = tokcompile.load(out)
    assert runner.precision == "fp16" and runner.file == "model.onnx"
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    assert runner(x).dtype == np.float32


def test_failed_build_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import tokcompile.export.stages as export

    def boom(*args, **kwargs):
        raise RuntimeError("simulated export failure")

    monkeypatch.setattr(export, "onnx_from_graph_module", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        tokcompile.build("test_vit", weights=str(checkpoint("test_vit")), output=out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_different_bundle_unless_forced(bundle, checkpoint, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle("test_vit"), out)
    with pytest.raises(
        tokcompile.TokcompileError, match=r"different tokcompile bundle \(test_vit, evit, fp32\).*--force"
    ):
        tokcompile.build("test_vit", weights=str(checkpoint("test_vit")), output=out, keep_rate=0.5)
    assert json.loads((out / "manifest.json").read_text())["method"]["params"]["keep_rate"] == 0.7
    tokcompile.build("test_vit", weights=str(checkpoint("test_vit")), output=out, keep_rate=0.5, force=True)
    assert json.loads((out / "manifest.json").read_text())["method"]["params"]["keep_rate"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_refuses_directory_with_other_files(checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(tokcompile.TokcompileError, match="did not write.*even with --force"):
        tokcompile.build("test_vit", weights=str(checkpoint("test_vit")), output=tmp_path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_same_bundle_can_be_rebuilt_in_place(bundle, checkpoint, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle("test_vit"), out)
    tokcompile.build("test_vit", weights=str(checkpoint("test_vit")), output=out)
    bundle_io.read_manifest(out)


def test_read_manifest_rejects_non_bundles_and_tampering(bundle, tmp_path):
    with pytest.raises(tokcompile.TokcompileError, match="not a tokcompile bundle"):
        bundle_io.read_manifest(tmp_path)
    out = tmp_path / "b"
    shutil.copytree(bundle("test_vit"), out)
    with open(out / "model.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(tokcompile.TokcompileError, match="fails its sha256"):
        tokcompile.load(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(tokcompile.TokcompileError, match="not valid JSON"):
        bundle_io.read_manifest(out)


def test_runner_rejects_wrong_image_shape(bundle):
    runner = tokcompile.load(bundle("test_vit"))
    with pytest.raises(tokcompile.TokcompileError, match=r"images must be float32 \[B, 3, 160, 160\]"):
        runner(np.zeros((1, 3, 224, 224), np.float32))
