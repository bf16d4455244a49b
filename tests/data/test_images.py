"""One preprocessing at the bundle's size: timm's eval recipe, re-derived here with PIL and numpy."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokcompile import TokcompileError
from tokcompile.data.images import ImageStats, list_images, load_batches, load_batches_multi, preprocessing, spread

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference(image: Image.Image, size: int, crop_pct: float, mean, std) -> np.ndarray:
    """Shorter side → floor(size / crop_pct) (bicubic, aspect kept), centre crop size × size,
    /255, normalise: [3, size, size]. Written from the recipe, not from timm's code."""
    w, h = image.size
    short = int(size / crop_pct)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = image.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    return ((crop - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 220
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "name, shape, crop_pct, mean, std",
    [
        # DINOv2-S/14: pretrained at 518 px (crop 1.0); the bundle is 98 px
        ("vit_small_patch14_dinov2", (3, 98, 98), 1.0, IMAGENET_MEAN, IMAGENET_STD),
        # DeiT-S (pretrained 224, crop 0.9) built at 384 px: resize to 426, crop 384
        ("deit_small_patch16_224", (3, 384, 384), 0.9, IMAGENET_MEAN, IMAGENET_STD),
        # DeiT-B/16 at its own 384 (crop 1.0)
        ("deit_base_patch16_384", (3, 384, 384), 1.0, IMAGENET_MEAN, IMAGENET_STD),
        ("test_vit", (3, 160, 160), 0.95, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ],
)
def test_preprocessing_at_the_bundle_size(name, shape, crop_pct, mean, std):
    p = preprocessing(name, shape)
    assert p.size == shape[1:] and p.crop_pct == crop_pct and p.interpolation == "bicubic"
    assert np.allclose(p.mean, mean) and np.allclose(p.std, std)
    for w, h in ((300, 200), (180, 420), (shape[1], shape[2])):
        image = photo(w, h)
        got = p(image)
        assert got.shape == shape and got.dtype == np.float32
        # bicubic rounding of PIL vs the tensor path: well under one 8-bit step (1/255/std ≈ 0.017)
        assert np.abs(got - reference(image, shape[1], crop_pct, mean, std)).max() < 1e-5
    record = p.record()
    assert record["size"] == list(shape[1:]) and record["resize_shorter_side_to"] == int(shape[1] / crop_pct)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (120, 140), dtype=np.uint16)
    Image.fromarray((values * 257).astype(np.uint16)).save(tmp_path / "a16.png")  # mode I;16, 0..65535
    Image.fromarray(values.astype(np.uint8)).convert("RGB").save(tmp_path / "b8.png")
    with Image.open(tmp_path / "a16.png") as img:
        assert img.mode == "I;16"
    p = preprocessing("test_vit", (3, 160, 160))
    (x16, x8), _ = next(load_batches(sorted(tmp_path.iterdir()), p, 2))
    assert np.array_equal(x16, x8)  # the same picture, not an almost white one
    assert abs(float(x16.mean())) < 0.2  # normalised around 0 (clipping gave ~1.0)


def test_float_images_are_skipped_and_counted(tmp_path, caplog):
    Image.fromarray(np.full((50, 60), 0.5, dtype=np.float32)).save(tmp_path / "f.tiff")  # mode F
    Image.fromarray(np.zeros((50, 60, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    stats = ImageStats()
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        batches = list(load_batches(list_images(tmp_path), preprocessing("test_vit", (3, 32, 32)), 4, stats))
    assert [x.shape for x, _ in batches] == [(1, 3, 32, 32)]
    assert [p.name for p in stats.skipped] == ["f.tiff"] and "floating-point image" in caplog.text


def test_one_decode_many_sizes(tmp_path):
    image = photo(200, 150)
    image.save(tmp_path / "x.png")
    small, big = preprocessing("test_vit", (3, 64, 64)), preprocessing("test_vit", (3, 160, 160))
    (a, b), paths = next(load_batches_multi([tmp_path / "x.png"], [small, big], 4))
    assert a.shape == (1, 3, 64, 64) and b.shape == (1, 3, 160, 160) and paths == [tmp_path / "x.png"]
    assert np.array_equal(a[0], small(image)) and np.array_equal(b[0], big(image))
    resized = big.resize(a)  # random inputs: already-normalised arrays are interpolated instead
    assert resized.shape == (1, 3, 160, 160)


def test_listing_names_the_flag_and_spread_covers_every_class(tmp_path):
    with pytest.raises(TokcompileError, match=r"^--calib '.*nowhere' is not a directory"):
        list_images(tmp_path / "nowhere", "--calib")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(TokcompileError, match=r"^--calib '.*' holds no images"):
        list_images(tmp_path, "--calib")
    # 4 classes × 5 files: the first 4 sorted files are one class, an even spread takes all four
    files = [Path(f"n0000000{c}_{i}.png") for c in range(4) for i in range(5)]
    picked = spread(files, 4)
    assert sorted({p.name[:9] for p in picked}) == [f"n0000000{c}" for c in range(4)]
    with pytest.raises(TokcompileError, match="--calib must be a positive integer"):
        spread(files, 0, "--calib")
