"""The TensorRT backends' logic that needs no TensorRT: profiles, names, checks, backend choice.

TensorRT's presence is monkeypatched (the backend's ``probe``/``unavailable``, the module's
version, ``gpu_info``) so these tests mean the same on a machine that has it. Engines built
with a real builder: test_tensorrt_rtx_build.py (TensorRT for RTX, any machine) and
test_tensorrt_build.py (TensorRT and a GPU).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import assert_user_error, run

import tokcompile
from tokcompile import TokcompileError, _defaults
from tokcompile.backends import get_backend
from tokcompile.backends.tensorrt import env, plugins
from tokcompile.backends.tensorrt import profiles as trt_backend
from tokcompile.backends.tensorrt.profiles import FALLBACK
from tokcompile.backends.tensorrt.run import to_numpy, torch_dtype
from tokcompile.manifest import EngineEntry, EnginesRecord, ExtraDim, StageEntry
from tokcompile.runtime.bundle import hash_files, read_manifest


def onnx_input_shapes(path: Path) -> dict[str, list[int]]:
    """Input dims of an ONNX file, -1 where dynamic (what TensorRT's parsed network reports)."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }


def entry(inputs: list[str], **fields) -> StageEntry:
    """A stage entry with the fields a test names (the rest empty)."""
    fields.setdefault("values_in", list(inputs))
    fields.setdefault("outputs", ["out"])
    return StageEntry(0, "s.onnx", inputs, onnxruntime_file="s.onnx", onnxruntime_precision="fp32", **fields)


def test_engine_file_name_records_flavour_version_and_targets():
    assert trt_backend.engine_file_name("stage1", "trt", "10.13.0.35", [90]) == "stage1.trt10.13-sm90.engine"
    assert trt_backend.engine_file_name("model", "trt", "11.4.0.106", [120]) == "model.trt11.4-sm120.engine"
    assert trt_backend.engine_file_name("stage1", "rtx", "1.7.1.116", [86, 80]) == "stage1.rtx1.7-sm80_86.engine"


def test_profiles_one_per_bucket_then_catch_all():
    shapes = {"tokens": (-1, -1, 64), "valid": (-1, -1), "ids": (-1, -1)}
    profiles = trt_backend.stage_profiles(shapes, ["tokens", "valid", "ids"], [60, 40, 80, 101, 500], 101, 64, 16)
    assert [p["bucket"] for p in profiles] == [40, 60, 80, 101, FALLBACK]  # sorted; 500 > all tokens dropped
    for p in profiles[:-1]:
        b = p["bucket"]
        assert p["shapes"]["tokens"] == [[1, b, 64], [16, b, 64], [64, b, 64]]  # token dim min = opt = max
        assert p["shapes"]["valid"] == [[1, b], [16, b], [64, b]]
    low = _defaults.TRT_FALLBACK_MIN_TOKENS
    assert profiles[-1]["shapes"]["ids"] == [[1, low], [16, 101], [64, 101]]
    json.dumps(profiles)  # goes into the manifest as is


def test_stage_without_token_inputs_gets_one_batch_profile():
    profiles = trt_backend.stage_profiles({"images": (-1, 3, 160, 160)}, [], [40, 60], 101, 32, 16)
    assert profiles == [
        {"bucket": FALLBACK, "shapes": {"images": [[1, 3, 160, 160], [16, 3, 160, 160], [32, 3, 160, 160]]}}
    ]


def test_extra_dims_take_their_whole_range_in_every_profile():
    """AdaViT's kept-head / MLP-row inputs are cut to the batch maximum, not bucketed."""
    shapes = {"rows": (-1, -1), "heads": (-1, -1)}
    profiles = trt_backend.stage_profiles(shapes, ["rows"], [40], 101, 64, 16, extra={"heads": 6})
    assert [p["shapes"]["heads"] for p in profiles] == [[[1, 1], [16, 6], [64, 6]]] * 2
    assert profiles[0]["shapes"]["rows"] == [[1, 40], [16, 40], [64, 40]]
    stages = [
        entry(inputs=["images"], outputs=["h", "c"], extra_dims=[ExtraDim("heads", "c", ["h"], 6)]),
        entry(inputs=["h_in", "x"], values_in=["h", "x"]),
    ]
    assert trt_backend.extra_dim_inputs(stages, 1) == {"h_in": 6}
    assert trt_backend.extra_dim_inputs(stages, 0) == {}


def test_profiles_opt_batch_and_bad_shapes():
    one = trt_backend.stage_profiles({"x": (-1, -1, 8)}, ["x"], [4], 10, 4, 4)
    assert one[0]["shapes"]["x"] == [[1, 4, 8], [4, 4, 8], [4, 4, 8]]
    with pytest.raises(ValueError, match="beyond batch and tokens"):
        trt_backend.stage_profiles({"x": (-1, 3, -1, 160)}, [], [], 101, 16, 16)
    with pytest.raises(ValueError, match="not inputs"):
        trt_backend.stage_profiles({"x": (-1, -1)}, ["y"], [4], 10, 16, 16)
    with pytest.raises(ValueError, match="opt_batch"):
        trt_backend.stage_profiles({"x": (-1, -1)}, ["x"], [4], 10, 8, 16)


def test_profiles_of_a_real_staged_bundle(method_bundle):
    """Read the manifest and ONNX files of an ATS bundle the way the builder does."""
    directory = method_bundle("ats")
    manifest = read_manifest(directory)
    stages = manifest.stages
    full = manifest.model.num_tokens
    assert full == 101
    for k, stage in enumerate(stages):
        shapes = onnx_input_shapes(directory / stage.file)
        buckets = trt_backend.stage_buckets(stages, k)
        tokens_of = trt_backend.token_inputs(stage)
        assert tokens_of == stage.token_inputs  # ATS: every dynamic input carries tokens
        profiles = trt_backend.stage_profiles(shapes, tokens_of, buckets, full, 64, 16)
        if k == 0:
            assert buckets == [] and [p["bucket"] for p in profiles] == [FALLBACK]
            assert profiles[0]["shapes"]["images"][2] == [64, 3, 160, 160]
            continue
        assert buckets == stages[k - 1].buckets and stage.token_inputs  # fed at the previous boundary's buckets
        assert [p["bucket"] for p in profiles] == [*sorted(set(buckets)), FALLBACK]
        for p in profiles[:-1]:
            for name in stage.token_inputs:
                assert {s[1] for s in p["shapes"][name]} == {p["bucket"]}
                assert [s[2:] for s in p["shapes"][name]] == [shapes[name][2:]] * 3


def test_token_inputs_are_dynamic_token_values():
    stage = entry(
        inputs=["x", "heads", "mask"],
        token_inputs=["x", "heads"],  # both have a dynamic dim 1
        token_values=["x", "mask", "y"],  # but only x's is the token dimension
    )
    assert trt_backend.token_inputs(stage) == ["x"]
    assert trt_backend.token_inputs(entry(inputs=["images"], values_in=["x"])) == []


def test_stage_buckets_needs_one_producing_boundary():
    stages = [
        entry(inputs=["images"], values_in=["x"], outputs=["a", "n"], count="n", buckets=[8, 16]),
        entry(inputs=["a"], outputs=["b"], token_inputs=["a"], token_values=["a", "b"]),
        entry(inputs=["a", "b"], outputs=["c"], token_inputs=["a", "b"], token_values=["a", "b"]),
    ]
    assert trt_backend.stage_buckets(stages, 1) == [8, 16]
    assert trt_backend.stage_buckets(stages, 2) == []  # token inputs from two stages: catch-all only


def test_pick_profile():
    profiles = [{"bucket": 40}, {"bucket": 60}, {"bucket": FALLBACK}]
    assert trt_backend.pick_profile(profiles, 60) == 1
    assert trt_backend.pick_profile(profiles, 59) == 2  # exact runs (batch of one) and counts above all buckets
    assert trt_backend.pick_profile(profiles, None) == 2
    assert trt_backend.pick_profile([{"bucket": FALLBACK}], None) == 0


def test_check_compatible():
    built = EnginesRecord("tensorrt", "10.13.0.35", 64, 16, compute_capability="sm_90")  # before target_sm
    rebuild = "'tokcompile build deit_s --backend tensorrt'"
    assert env.check_compatible(built, "TensorRT", "10.13.0.35", "sm_90", rebuild) is None
    msg = env.check_compatible(built, "TensorRT", "10.9.0.34", "sm_89", rebuild)
    assert msg == (
        "engine built with TensorRT 10.13.0.35 for sm_90; this machine has TensorRT 10.9.0.34 on sm_89: "
        "rebuild the bundle with 'tokcompile build deit_s --backend tensorrt'"
    )
    assert "on sm_89" in env.check_compatible(built, "TensorRT", "10.13.0.35", "sm_89", rebuild)
    rtx = EnginesRecord("tensorrt-rtx", "1.7.1.116", 64, 16, target_sm=[80, 86, 89])  # any of them runs
    assert env.check_compatible(rtx, "TensorRT for RTX", "1.7.1.116", "sm_86", rebuild) is None
    assert "for sm_80, sm_86, sm_89;" in env.check_compatible(rtx, "TensorRT for RTX", "1.7.1.116", "sm_120", rebuild)
    assert "1.8.0.1 on sm_86" in env.check_compatible(rtx, "TensorRT for RTX", "1.8.0.1", "sm_86", rebuild)
    assert env.check_compatible(rtx, "TensorRT for RTX", "1.7.1.116", "no GPU", rebuild) is not None


def test_trt_dtype_mapping():
    assert torch_dtype("FLOAT") == torch.float32
    assert torch_dtype("HALF") == torch.float16
    assert torch_dtype("BF16") == torch.bfloat16
    assert torch_dtype("INT64") == torch.int64
    assert torch_dtype("BOOL") == torch.bool
    with pytest.raises(TokcompileError, match="FP8"):
        torch_dtype("FP8")
    out = to_numpy(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert out.dtype == np.float32 and out.tolist() == [1.5, -2.0]
    assert to_numpy(torch.tensor([True, False])).dtype == np.bool_


def test_default_timing_cache_is_per_gpu_and_version():
    path = env.cache_path(
        "timing", {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "sm_90"}, "trt", "10.13.0.35"
    )
    assert path.parent == Path(_defaults.TRT_CACHE_DIR).expanduser()
    assert path.name == "timing-nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35.cache"


def test_plugin_library_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(_defaults.PLUGIN_LIB_ENV, raising=False)
    monkeypatch.setattr(plugins, "REPO_ROOT", tmp_path)
    assert plugins.resolve_plugin_lib(None) is None
    built = tmp_path / "build" / _defaults.PLUGIN_LIBRARY
    built.parent.mkdir()
    built.write_bytes(b"\x7fELF")
    assert plugins.resolve_plugin_lib(None) == built
    other = tmp_path / "other.so"
    other.write_bytes(b"\x7fELF")
    monkeypatch.setenv(_defaults.PLUGIN_LIB_ENV, str(other))
    assert plugins.resolve_plugin_lib(None) == other
    assert plugins.resolve_plugin_lib(built) == built
    with pytest.raises(TokcompileError, match="--plugin-lib 'nope.so' is not a file"):
        plugins.resolve_plugin_lib("nope.so")
    monkeypatch.setenv(_defaults.PLUGIN_LIB_ENV, str(tmp_path / "gone.so"))
    with pytest.raises(TokcompileError, match=f"\\${_defaults.PLUGIN_LIB_ENV}="):
        plugins.resolve_plugin_lib(None)


# --- backend choice (build) ------------------------------------------------------------------


@pytest.fixture
def no_tensorrt(monkeypatch):
    backend = type(get_backend("tensorrt"))
    monkeypatch.setattr(backend, "probe", lambda self: "TensorRT is not installed (test)")
    monkeypatch.setattr(backend, "unavailable", lambda self, manifest: "TensorRT is not installed (test)")


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT 10.9 on an sm_89 GPU, as far as the checks can tell (no engine can run)."""
    backend = type(get_backend("tensorrt"))
    monkeypatch.setattr(backend, "probe", lambda self: None)
    monkeypatch.setattr(backend, "unavailable", lambda self, manifest: None)
    monkeypatch.setattr(backend, "trt", lambda self: type("tensorrt", (), {"__version__": "10.9.0.34"}))
    monkeypatch.setattr(env, "gpu_info", lambda: {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "sm_89"})


def test_auto_picks_onnxruntime_without_tensorrt_and_says_why(no_tensorrt, checkpoint, tmp_path, capsys):
    out = tmp_path / "auto"
    code, stdout, err = run(
        capsys, "build", "test_vit", "--weights", str(checkpoint("test_vit")), "--backend", "auto", "-o", str(out)
    )
    assert code == 0, err
    assert "backend auto: ONNX Runtime, since TensorRT is not installed (test)" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and "tensorrt" not in manifest
    assert not list(out.glob("*.engine"))


def test_explicit_tensorrt_without_it_is_one_line_and_writes_nothing(no_tensorrt, tmp_path, capsys):
    out = tmp_path / "trt"
    code, _, err = run(capsys, "build", "test_vit", "--weights", "random", "--backend", "tensorrt", "-o", str(out))
    assert_user_error(
        code, err, r"--backend tensorrt needs TensorRT and a CUDA GPU: TensorRT is not installed.*--backend onnxruntime"
    )
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (
            ["--max-batch", "8"],
            r"--max-batch applies to --backend tensorrt or tensorrt-rtx \(or auto\), not onnxruntime$",
        ),
        (
            ["--backend", "onnxruntime", "--plugin-lib", "x.so", "--timing-cache", "t"],
            r"--plugin-lib, --timing-cache apply to --backend tensorrt \(or auto\), not onnxruntime$",
        ),
        (["--target-sm", "80"], r"--target-sm applies to --backend tensorrt-rtx, not onnxruntime$"),
        (
            ["--backend", "tensorrtx"],
            r"--backend must be one of onnxruntime, tensorrt, tensorrt-rtx, auto, got 'tensorrtx'",
        ),
    ],
)
def test_backend_flag_errors(argv, pattern, tmp_path, capsys):
    code, _, err = run(capsys, "build", "test_vit", "--weights", "random", *argv, "-o", str(tmp_path / "b"))
    assert_user_error(code, err, pattern)
    assert not (tmp_path / "b").exists()


def test_missing_plugin_library_fails_before_building(fake_tensorrt, tmp_path, capsys):
    out = tmp_path / "b"
    argv = [
        "build",
        "test_vit",
        "--weights",
        "random",
        "--backend",
        "tensorrt",
        "--plugin-lib",
        str(tmp_path / "no.so"),
    ]
    code, _, err = run(capsys, *argv, "-o", str(out))
    assert_user_error(code, err, r"--plugin-lib '.*no\.so' is not a file")
    code, _, err = run(capsys, *argv[:-2], "--max-batch", "0", "-o", str(out))
    assert_user_error(code, err, r"--max-batch must be ≥ 1, got 0")
    assert not out.exists()


# --- running a TensorRT bundle where TensorRT is missing or different -------------------------


@pytest.fixture
def trt_bundle(bundle, tmp_path) -> Path:
    """A copy of an EViT bundle whose manifest says it was built for TensorRT 10.13 on sm_90 (with a
    stand-in engine file, hashed like every file a bundle runs)."""
    directory = tmp_path / "trt-bundle"
    shutil.copytree(bundle("test_vit"), directory)
    manifest = read_manifest(directory)
    stage = manifest.stages[0]
    manifest.backend = "tensorrt"
    engine = "model.trt10.13-sm90.engine"
    (directory / engine).write_bytes(b"not an engine")
    manifest.files.update(hash_files(directory, [engine]))
    profiles = trt_backend.stage_profiles(onnx_input_shapes(directory / stage.file), [], [], 101, 64, 16)
    stage.engine = EngineEntry(engine, profiles)
    manifest.tensorrt = EnginesRecord(
        "tensorrt", "10.13.0.35", 64, 16, gpu="NVIDIA H100 80GB HBM3", compute_capability="sm_90"
    )
    (directory / "manifest.json").write_text(manifest.to_json())
    return directory


def test_runner_falls_back_to_onnx_files_with_a_warning(no_tensorrt, trt_bundle, bundle, caplog):
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        runner = tokcompile.load(trt_bundle)
    assert runner.backend == "onnxruntime" and runner.file == "model.onnx"
    assert "was built for TensorRT, which cannot run here (TensorRT is not installed (test))" in caplog.text
    np.testing.assert_array_equal(runner(x), tokcompile.load(bundle("test_vit"))(x))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        assert tokcompile.load(trt_bundle, backend="onnxruntime").backend == "onnxruntime"
    assert not caplog.text
    with pytest.raises(TokcompileError, match="TensorRT is not installed"):
        tokcompile.load(trt_bundle, backend="tensorrt")
    with pytest.raises(TokcompileError, match="has no TensorRT engines"):
        tokcompile.load(bundle("test_vit"), backend="tensorrt")


def test_version_or_gpu_mismatch_is_one_line_before_any_engine_is_read(fake_tensorrt, trt_bundle, capsys):
    with pytest.raises(TokcompileError) as info:
        tokcompile.load(trt_bundle)
    assert str(info.value).startswith(
        "engine built with TensorRT 10.13.0.35 for sm_90; this machine has TensorRT 10.9.0.34 on sm_89: "
        "rebuild the bundle with 'tokcompile build test_vit --method evit --precision fp32 --backend tensorrt -o "
    )
    assert "\n" not in str(info.value)
    code, _, err = run(capsys, "compare", "-q", str(trt_bundle))
    assert_user_error(code, err, r"engine built with TensorRT 10\.13\.0\.35 for sm_90; this machine has TensorRT 10\.9")


def test_compare_runs_onnx_files_of_a_tensorrt_bundle_without_tensorrt(no_tensorrt, trt_bundle):
    from tokcompile.verify.compare import compare

    report = compare(trt_bundle, batch=2, samples=1)
    assert report.passed and report.precision == "fp32"
    assert any("TensorRT cannot run here (TensorRT is not installed (test))" in n for n in report.notes)


def test_onnxruntime_bundles_carry_the_planned_engine_commands(method_bundle):
    """A bundle built on a CPU lists the trtexec/polygraphy lines that lower it on the GPU machine."""
    directory = method_bundle("ats")
    manifest = read_manifest(directory)
    report, script = (directory / "report.md").read_text(), (directory / "engines.sh").read_text()
    assert manifest.backend == "onnxruntime" and "Not built here" in report
    for k, stage in enumerate(manifest.stages):
        plan = stage.tensorrt_plan
        expected = len(trt_backend.stage_buckets(manifest.stages, k)) + 1  # + the catch-all
        assert len(plan) == expected and plan[-1]["bucket"] == FALLBACK
        line = next(x for x in script.splitlines() if x.startswith(f"trtexec --onnx={stage.file} "))
        assert line.count("--profile=") == expected
