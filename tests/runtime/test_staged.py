"""Staged, bucketed execution (ATS): batch independence, bucket dispatch, stage structure."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from reference_ats import eager_ats

import tokcompile
from tokcompile import TokcompileError
from tokcompile.runtime.bundle import read_manifest
from tokcompile.runtime.staged import DispatchStats, fit_tokens


@pytest.fixture(scope="module")
def ats_bundle(method_bundle):
    return method_bundle("ats")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 160, 160), dtype=np.float32)


def test_batch_of_8_equals_each_image_alone_against_eager_reference(ats_bundle, models):
    model, _ = models("test_vit")
    runner = tokcompile.load(ats_bundle)
    params = runner.manifest.method.params
    budgets = dict(zip(params["layers"], params["max_tokens"]))
    x = images(8)
    got = runner.run(x)
    counts = np.stack([got[f"count_{layer}"] for layer in budgets], 1)
    assert len({tuple(c) for c in counts}) > 1, "inputs should give different per-image counts"
    for b in range(8):
        ref_logits, ref_kept = eager_ats(model, torch.from_numpy(x[b : b + 1]), budgets)
        assert np.abs(got["logits"][b] - ref_logits[0].numpy()).max() <= 1e-4
        for layer, ids in ref_kept.items():
            count = int(got[f"count_{layer}"][b])
            assert count == ids.size, f"image {b} layer {layer}"
            np.testing.assert_array_equal(got[f"kept_ids_{layer}"][b, :count], ids, err_msg=f"image {b} layer {layer}")


def test_dispatch_uses_buckets_and_never_truncates(ats_bundle):
    runner = tokcompile.load(ats_bundle)
    stages = runner.manifest.stages
    assert [s.buckets for s in stages[:-1]] == [[40, 60, 80]] * (len(stages) - 1)
    x = images(6, seed=3)
    exact = runner.engine.run(x, exact=True)
    runner.engine.stats = DispatchStats()
    bucketed = runner.run(x)
    np.testing.assert_allclose(bucketed["logits"], exact["logits"], atol=1e-5)
    hits = runner.engine.stats.buckets
    # a listed bucket, or (above every bucket) the batch's own count, never padded further
    assert hits and all(b in (40, 60, 80) or 80 < b <= 101 for h in hits.values() for b in h)
    # a bucket list whose largest bucket is below the batch's count: runs at the count itself
    for s in stages:
        if s.buckets:
            s.buckets = [8]
    runner.engine.stats = DispatchStats()
    small = runner.run(x)
    np.testing.assert_allclose(small["logits"], exact["logits"], atol=1e-5)
    for stage, hits in runner.engine.stats.buckets.items():
        assert list(hits) == [max(runner.engine.stats.counts[stage])]  # the batch max, not 8


@pytest.mark.parametrize(
    "count, buckets, expected",
    [(60, (40, 60, 80), 60), (59, (40, 60, 80), 60), (61, (40, 60, 80), 80), (90, (40, 60, 80), 90)],
)
def test_bucket_boundaries(count, buckets, expected):
    from tokcompile.runtime.buckets import pick_bucket

    assert pick_bucket(count, buckets) == expected


def test_fit_tokens_pads_with_masked_values():
    tokens = np.ones((2, 3, 4), np.float32)
    assert fit_tokens(tokens, 2).shape == (2, 2, 4)
    padded = fit_tokens(tokens, 5)
    assert padded.shape == (2, 5, 4) and (padded[:, 3:] == 0).all()
    assert (fit_tokens(np.ones((2, 3), bool), 4)[:, 3] == False).all()  # noqa: E712
    assert (fit_tokens(np.zeros((2, 3), np.int64), 4)[:, 3] == -1).all()


def test_stage_structure(ats_bundle):
    m = read_manifest(ats_bundle)
    layers = m.method.params["layers"]
    stages = m.stages
    assert len(stages) == len(layers) + 1
    assert stages[0].inputs == ["images"] and stages[-1].count is None
    params = {i.name for i in onnx.load(str(ats_bundle / stages[1].file)).graph.initializer}
    for s in stages[1:]:
        assert all(v in s.token_values or v.startswith("getitem") for v in s.values_in), s.values_in
        model = onnx.load(str(ats_bundle / s.file))
        assert not set(s.inputs) & params  # no weight crosses a stage boundary
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            assert dims[0].dim_param, "dynamic batch"
            if inp.name in s.token_values:
                assert dims[1].dim_param, f"{inp.name}: dynamic token dimension"
    assert sum(1 for n in onnx.load(str(ats_bundle / stages[0].file)).graph.node if n.op_type == "AtsSample") == 1
    assert m.tokens.calibration["source"] == "random"
    assert math.isclose(m.gmacs.dense / m.gmacs.reduced, m.gmacs.ideal_speedup, rel_tol=1e-3)


def test_compare_and_bench_on_staged_bundle(ats_bundle):
    from tokcompile.runtime.bench import bench
    from tokcompile.verify.compare import compare

    report = compare(ats_bundle, batch=4, samples=1)
    layers = tokcompile.load(ats_bundle).manifest.method.params["layers"]
    assert report.passed and report.layer_agreement == {f"{k}_{i}": 1.0 for i in layers for k in ("count", "kept_ids")}
    result = bench(ats_bundle, batches=[2], iters=1, warmup=0)
    assert {r.name for r in result.rows} == {"reduced", "dense", "masked"}
    assert result.dispatch and all(0.0 <= d["padding_overhead"] < 1.0 for d in result.dispatch)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"buckets": "80,40"}, "strictly increasing"),
        ({"buckets": "40,300"}, "bucket 300 is larger than the model's 101 tokens"),
        ({"buckets": "a,b"}, "--buckets must be 'auto' or comma-separated integers"),
        ({"profile": "tpu9"}, "unknown profile 'tpu9'"),
        ({"max_tokens": "1"}, "--max-tokens must be ≥ 2"),
    ],
)
def test_bad_staged_inputs(checkpoint, tmp_path, kwargs, pattern):
    with pytest.raises(TokcompileError, match=pattern):
        tokcompile.build("test_vit", method="ats", weights=str(checkpoint("test_vit")), output=tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


def test_calib_folder_without_images(checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TokcompileError, match="holds no images"):
        tokcompile.build(
            "test_vit", method="ats", weights=str(checkpoint("test_vit")), output=tmp_path / "o", calib=tmp_path
        )
