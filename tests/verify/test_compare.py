"""compare (Polygraphy) and bench on small bundles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tokcompile import TokcompileError
from tokcompile.runtime.bench import bench, ratio
from tokcompile.verify.compare import compare


def test_compare_passes_and_reports_layers(bundle):
    report = compare(bundle("test_vit"), batch=3, samples=2)
    assert report.passed and report.polygraphy_passed
    assert report.images == 6 and report.precision == "fp32" and report.atol == 1e-4
    assert report.max_abs <= 1e-4 and report.top1_agreement == 1.0
    assert report.layer_agreement == {"kept_ids_2": 1.0, "kept_ids_3": 1.0, "kept_ids_4": 1.0}


def test_compare_fails_outside_tolerance(bundle):
    report = compare(bundle("test_vit"), batch=2, samples=1, atol=1e-12)
    assert not report.passed


def test_compare_reports_a_selection_flip(bundle, monkeypatch):
    """A reference whose layer-3 selection differs must show up as a flip in that layer."""
    import torch

    import tokcompile.api as api

    real = api.rebuild

    def flipped(*args, **kwargs):
        gm, spec, info = real(*args, **kwargs)

        position = info["outputs"].index("kept_ids_3")

        def forward(x, _gm=gm):
            out = list(_gm(x))
            out[position] = torch.flip(out[position], dims=[0])  # kept_ids_3 of image 0 ↔ image 1
            return tuple(out)

        return forward, spec, info

    monkeypatch.setattr(api, "rebuild", flipped)
    report = compare(bundle("test_vit"), batch=2, samples=1)
    assert report.layer_agreement["kept_ids_3"] == 0.0
    assert 0.0 < report.layer_overlap["kept_ids_3"] < 1.0 and report.layer_overlap["kept_ids_2"] == 1.0
    assert report.layer_agreement["kept_ids_2"] == 1.0
    assert any("selection flips" in line for line in report.lines())


def test_compare_on_image_folder_skips_undecodable(bundle, tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (200, 180, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with caplog.at_level("WARNING", logger="tokcompile"):
        report = compare(bundle("test_vit"), images=tmp_path, batch=2)
    assert report.images == 3 and report.passed
    assert "broken.jpg" in caplog.text


def test_compare_on_folder_without_images(bundle, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(TokcompileError, match="holds no images"):
        compare(bundle("test_vit"), images=tmp_path)


def test_bench_times_reduced_and_dense(bundle):
    rows = bench(bundle("test_vit"), batches=[1, 2], iters=2, warmup=1).rows
    assert [(r.batch, r.name) for r in rows] == [(1, "reduced"), (1, "dense"), (2, "reduced"), (2, "dense")]
    assert all(r.images_per_s > 0 and r.p50_ms > 0 for r in rows)
    assert ratio(rows, 2) > 0
