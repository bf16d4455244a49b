"""Calibration images: spread over the folder, at the model's size, errors naming --calib; noise flagged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bundle_fixtures import DINOV2, DINOV2_KWARGS
from PIL import Image

from tokcompile import TokcompileError, _defaults
from tokcompile.data.images import list_images, preprocessing
from tokcompile.runtime.calibrate import plan_calibration


def test_calib_folder_is_spread_and_counted(test_vit, photos, monkeypatch, caplog):
    _, spec = test_vit
    monkeypatch.setattr(_defaults, "CALIB_IMAGES", 4)
    with caplog.at_level("INFO", logger="tokcompile"):
        plan = plan_calibration(spec, photos, None, None, None)
    files = list_images(photos)
    assert len(files) == 6
    picked = [files[i] for i in (0, 2, 3, 5)]  # 4 evenly spaced of 6: linspace(0, 5, 4) rounded
    p = preprocessing("test_vit", (3, 160, 160))
    with Image.open(picked[1]) as img:
        assert np.array_equal(plan.images[1], p(img.convert("RGB")))
    assert plan.images.shape == (4, 3, 160, 160)
    assert plan.record["images"] == 4 and plan.record["files"] == 6
    assert plan.record["selection"] == "4 evenly spaced over the 6 sorted files"
    assert plan.record["preprocess"]["size"] == [160, 160]
    assert "calibrate: 4 of the 6 images in" in caplog.text


def test_calib_at_the_bundle_size_not_the_pretrained_one(photos):
    from tokcompile.models import create_model

    _, spec, _, _ = create_model(DINOV2, weights="random", **DINOV2_KWARGS)
    plan = plan_calibration(spec, photos, None, None, None)
    assert plan.images.shape == (6, 3, 98, 98)  # DINOv2's pretrained config says 518


def test_calib_errors_name_calib(test_vit, tmp_path):
    _, spec = test_vit
    with pytest.raises(TokcompileError, match=r"^--calib '.*nowhere' is not a directory"):
        plan_calibration(spec, tmp_path / "nowhere", None, None, None)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(TokcompileError, match=r"^--calib '.*': none of the 1 files could be decoded"):
        plan_calibration(spec, tmp_path, None, None, None)


def test_random_calibration_is_flagged_in_manifest_and_report(method_bundle):
    directory = method_bundle("ats")  # built without --calib
    manifest = json.loads((directory / "manifest.json").read_text())
    calibration = manifest["tokens"]["calibration"]
    assert calibration["source"] == "random" and calibration["images"] == _defaults.CALIB_RANDOM_IMAGES
    assert calibration["gmacs_images"] == calibration["images"]  # GMACs from every calibration input
    assert any("RANDOM-noise inputs" in w for w in manifest["tokens"]["warnings"])
    assert (
        "WARNING: no --calib images: token counts, buckets and GMACs come from" in (directory / "report.md").read_text()
    )
