"""TensorRT engines end to end: build, profiles per bucket, run against ONNX Runtime, checks.

Needs the TensorRT builder (``tensorrt``) and a CUDA GPU; skipped elsewhere with the reason.
The ATS tests also need the plugin library (``cmake --build build``; see README: TensorRT),
since ATS routes AtsSample to a plugin. Between them these tests make every TensorRT call of
the builder and the runner of backends/tensorrt/ under full TensorRT (TensorRT for RTX builds:
test_tensorrt_rtx_build.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import tokcompile
from tokcompile import TokcompileError, _defaults
from tokcompile.backends import get_backend
from tokcompile.backends.tensorrt import FALLBACK, engine_file_name, token_inputs
from tokcompile.backends.tensorrt.env import gpu_info, sm_number
from tokcompile.backends.tensorrt.plugins import resolve_plugin_lib
from tokcompile.models.weights import file_sha256

pytestmark = [pytest.mark.trt, pytest.mark.slow]  # slow: TensorRT bundles of its own, engines built on the GPU

trt = pytest.importorskip("tensorrt", reason="the TensorRT builder is not installed (pip install -e '.[tensorrt]')")
_reason = get_backend("tensorrt").unavailable({})
if _reason is not None:
    pytest.skip(f"TensorRT cannot run here: {_reason}", allow_module_level=True)

BUCKETS = "40,60,80"
FULL = 101  # test_vit: 10×10 patches + CLS


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trt") / "timing.cache"


@pytest.fixture(scope="module")
def build_trt(checkpoint, tmp_path_factory, cache):
    built = {}

    def make(method: str, precision: str = "fp32", **params):
        key = (method, precision, tuple(sorted(params.items())))
        if key not in built:
            out = tmp_path_factory.mktemp("trt-bundle") / f"test_vit-{method}-{precision}"
            tokcompile.build(
                "test_vit",
                method=method,
                precision=precision,
                weights=str(checkpoint("test_vit")),
                output=out,
                backend="tensorrt",
                timing_cache=cache,
                **params,
            )
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="module")
def plugin_lib():
    lib = resolve_plugin_lib(None)
    if lib is None:
        pytest.skip(f"no plugin library: build plugins/ with cmake or set ${_defaults.PLUGIN_LIB_ENV}")
    return lib


def engine(directory, stage):
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    return runtime.deserialize_cuda_engine((directory / stage["tensorrt_file"]).read_bytes())


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 160, 160), dtype=np.float32)


def kept_agreement(a: dict, b: dict) -> float:
    names = [n for n in a if n.startswith("kept_ids_")]
    rows = [set(x.tolist()) - {-1} == set(y.tolist()) - {-1} for n in names for x, y in zip(a[n], b[n], strict=True)]
    return float(np.mean(rows)) if rows else 1.0


def test_evit_bundle(build_trt, cache):
    directory = build_trt("evit")
    manifest = json.loads((directory / "manifest.json").read_text())
    gpu = gpu_info()
    block = manifest["tensorrt"]
    assert manifest["backend"] == "tensorrt" and block["version"] == trt.__version__
    assert block["compute_capability"] == gpu["compute_capability"] and block["plugin_library"] is None
    stage = manifest["stages"][0]
    sm = sm_number(gpu["compute_capability"])
    assert stage["tensorrt_file"] == engine_file_name("model", "trt", trt.__version__, [sm])
    assert block["flavour"] == "tensorrt" and block["target_sm"] == [sm] and manifest["tf32"] is False
    assert stage["tensorrt_file"] in manifest["files"] and stage["file"] in manifest["files"]  # ONNX kept
    assert cache.is_file() and cache.stat().st_size > 0

    e = engine(directory, stage)
    assert e.num_optimization_profiles == 1
    lo, opt, hi = (tuple(d) for d in e.get_tensor_profile_shape("images", 0))
    assert (lo, opt, hi) == ((1, 3, 160, 160), (16, 3, 160, 160), (_defaults.TRT_MAX_BATCH, 3, 160, 160))

    x = images(4)
    runner = tokcompile.load(directory)
    assert runner.backend == "tensorrt" and runner.file == stage["tensorrt_file"]
    got, ref = runner.run(x), tokcompile.load(directory, backend="onnxruntime").run(x)
    assert got.keys() == ref.keys()
    assert got["kept_ids_2"].dtype == np.int64
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-3, rtol=0)
    # near-tied CLS scores may order differently under another summation order; most must agree
    assert kept_agreement(got, ref) >= 0.75
    with pytest.raises(TokcompileError, match=f"batch {_defaults.TRT_MAX_BATCH + 1} is above"):
        runner(np.zeros((_defaults.TRT_MAX_BATCH + 1, 3, 160, 160), np.float32))


def test_evit_fp16_bundle(build_trt):
    from tokcompile.verify.compare import compare

    directory = build_trt("evit", "fp16")
    report = compare(directory, batch=4, samples=1)
    assert report.precision == "fp16" and report.passed, report.lines()


def test_compare_single_file_bundle_with_trt_runner(build_trt):
    from tokcompile.verify.compare import compare

    report = compare(build_trt("evit"), batch=4, samples=2, atol=1e-3)
    assert report.passed and not report.notes, report.lines()


def test_version_mismatch_from_the_manifest(build_trt, tmp_path):
    directory = tmp_path / "edited"
    shutil.copytree(build_trt("evit"), directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["tensorrt"]["version"] = "9.0.0.0"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TokcompileError, match=r"^engine built with TensorRT 9\.0\.0\.0 for sm_\d+; this machine has"):
        tokcompile.load(directory)
    assert tokcompile.load(directory, backend="onnxruntime").backend == "onnxruntime"


def test_ats_profiles_per_bucket_and_run(build_trt, plugin_lib):
    directory = build_trt("ats", buckets=BUCKETS)
    manifest = json.loads((directory / "manifest.json").read_text())
    stages = manifest["stages"]
    lib = manifest["tensorrt"]["plugin_library"]
    assert lib is not None and file_sha256(directory / lib["file"]) == lib["sha256"]
    assert any(s["tensorrt_plugin_layers"] for s in stages)
    for k, stage in enumerate(stages):
        e = engine(directory, stage)
        profiles = stage["tensorrt_profiles"]
        assert e.num_optimization_profiles == len(profiles)
        if k == 0:
            assert [p["bucket"] for p in profiles] == [FALLBACK]
            continue
        assert [p["bucket"] for p in profiles] == [*sorted(set(stages[k - 1]["buckets"])), FALLBACK]
        for i, p in enumerate(profiles):
            for name in token_inputs(stage):
                lo, opt, hi = (tuple(d) for d in e.get_tensor_profile_shape(name, i))
                if p["bucket"] == FALLBACK:
                    assert (lo[1], opt[1], hi[1]) == (_defaults.TRT_FALLBACK_MIN_TOKENS, FULL, FULL)
                else:
                    assert lo[1] == opt[1] == hi[1] == p["bucket"]
                assert (lo[0], hi[0]) == (1, _defaults.TRT_MAX_BATCH)

    x = images(8)
    runner = tokcompile.load(directory)
    assert runner.backend == "tensorrt"
    got, ref = runner.run(x), tokcompile.load(directory, backend="onnxruntime").run(x)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-3, rtol=0)
    assert kept_agreement(got, ref) >= 0.75
    # batch maxima that are no bucket run on the catch-all profile, never truncated
    exact = runner.engine.run(x[:1], exact=True)
    one = tokcompile.load(directory, backend="onnxruntime").engine.run(x[:1], exact=True)
    np.testing.assert_allclose(exact["logits"], one["logits"], atol=1e-3, rtol=0)


def test_compare_staged_bundle(build_trt, plugin_lib):
    from tokcompile.verify.compare import compare

    report = compare(build_trt("ats", buckets=BUCKETS), batch=4, samples=2, atol=1e-3)
    assert report.passed and not report.notes, report.lines()
