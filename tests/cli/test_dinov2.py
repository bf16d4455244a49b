"""A DINOv2-style model at a size other than its pretrained one, through every image path of the CLI.

timm's DINOv2-S/14 configuration (pretrained at 518 px, crop 1.0, no classifier) at 98 px
(``bundle_fixtures.DINOV2_KWARGS``): build --calib, eval, compare, bench --images, sweep and
show must all preprocess at 98 px, and none may print top-1 figures for a 0-class model.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from bundle_fixtures import DINOV2, DINOV2_ARGS
from cli_helpers import run


@pytest.fixture(scope="module")
def ats_bundle(dinov2_checkpoint, photos, tmp_path_factory) -> Path:
    """ATS with --calib through the CLI (staged: calibration, buckets and GMACs from the photos)."""
    from tokcompile.cli.main import main

    out = tmp_path_factory.mktemp("dinov2") / "ats"
    argv = ["build", DINOV2, *DINOV2_ARGS, "--method", "ats", "--weights", str(dinov2_checkpoint)]
    assert main([*argv, "--calib", str(photos), "-o", str(out), "-q"]) == 0
    return out


def test_build_with_calib(ats_bundle):
    manifest = json.loads((ats_bundle / "manifest.json").read_text())
    assert manifest["model"]["input_shape"] == [3, 98, 98] and manifest["model"]["num_classes"] == 0
    calibration = manifest["tokens"]["calibration"]
    assert (calibration["images"], calibration["files"], calibration["gmacs_images"]) == (6, 6, 6)
    assert calibration["preprocess"]["size"] == [98, 98] and calibration["preprocess"]["crop_pct"] == 1.0
    assert not any("RANDOM" in w for w in manifest["tokens"]["warnings"])


def test_eval(capsys, dinov2_bundle, photos):
    code, out, err = run(capsys, "eval", str(dinov2_bundle()), "--images", str(photos), "--batch", "4", "-q")
    assert code == 0, err
    assert "evaluated 6 images, batch 4: bundle fp32, reference dense model fp32" in out
    assert not re.search(r"^top-1", out, re.M) and "no classifier (0 classes)" in out
    assert "features cosine similarity: mean" in out and ", p5 " in out


def test_compare(capsys, ats_bundle, photos):
    code, out, err = run(capsys, "compare", str(ats_bundle), "--images", str(photos), "-q")
    assert code == 0, out + err
    assert out.startswith("compared 6 images: the bundle (fp32) vs fp32 PyTorch (--reference same)")
    assert "top-1 agreement" not in out and "output effect (output cosine to the reference)" in out
    assert "kept_ids_1: identical kept-token sets" in out and "count_1: identical token counts" in out


def test_bench_with_images(capsys, ats_bundle, photos):
    argv = ["bench", str(ats_bundle), "--images", str(photos), "--batch", "2", "--iters", "1", "--warmup", "0"]
    code, out, err = run(capsys, *argv, "-q")
    assert code == 0, err
    assert "batch 2: reduced/dense throughput ratio" in out and "stage 1: tokens" in out


def test_show(capsys, dinov2_bundle, photos, tmp_path):
    image = sorted(photos.iterdir())[3]
    code, out, err = run(capsys, "show", str(dinov2_bundle()), str(image), "-o", str(tmp_path), "-q")
    assert code == 0, err
    assert f"wrote {tmp_path / (image.stem + '-' + dinov2_bundle().name + '.png')}: 4 panels" in out
    assert "input (98×98)" in out and "block 1: " in out


def test_sweep_with_lower_resolution_baseline(capsys, dinov2_checkpoint, photos, tmp_path):
    out_dir = tmp_path / "sw"
    argv = ["sweep", DINOV2, *DINOV2_ARGS, "--keep-rate", "0.7", "--weights", str(dinov2_checkpoint)]
    code, out, err = run(
        capsys, *argv, "--images", str(photos), "--limit", "3", "--resolutions", "70", "-o", str(out_dir), "-q"
    )
    assert code == 0, err
    with (out_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["series"], r["value"], r["img_size"]) for r in rows] == [
        ("dense", "", "98"),
        ("evit", "0.7", "98"),
        ("lower resolution", "70", "70"),
    ]
    assert rows[1]["top1"] == rows[1]["agreement"] == ""  # a 0-class model has no top-1
    assert float(rows[2]["gmacs"]) < float(rows[0]["gmacs"]) and -1 <= float(rows[2]["cosine_mean"]) <= 1
    baseline = json.loads((out_dir / "baselines" / "img_size-70" / "manifest.json").read_text())
    assert baseline["model"]["input_shape"] == [3, 70, 70]
    assert baseline["weights"]["resampled"]["from_grid"] == [7, 7] and baseline["weights"]["resampled"]["to_grid"] == [
        5,
        5,
    ]
