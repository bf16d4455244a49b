"""show: EViT patch states and ToMe merge groups painted on synthetic data, and the figure of a bundle."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tokcompile import TokcompileError
from tokcompile.verify.show import (
    EARLIER,
    FUSED,
    KEPT,
    PRUNED,
    evit_patch_states,
    merge_groups,
    paint_merge_groups,
    paint_patch_states,
    show,
)

GRID, PATCH = (2, 3), (4, 4)  # 6 patches of 4×4 px: a 8×12 image


def patch_pixels(img: np.ndarray, index: int) -> np.ndarray:
    r, c = divmod(index, GRID[1])
    return img[r * PATCH[0] : (r + 1) * PATCH[0], c * PATCH[1] : (c + 1) * PATCH[1]]


@pytest.fixture
def picture() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.0, 1.0, (8, 12, 3))


def test_evit_patch_states_from_kept_ids():
    # P = 1 (id 0 = CLS). Layer A keeps patches 0, 2, 3, 5; layer B keeps 2 and the fused token (-1).
    layer_a = np.array([1, 3, 4, 6])
    layer_b = np.array([3, -1])
    a, b = evit_patch_states([layer_a, layer_b], num_patches=6, num_prefix=1, fuse=True)
    assert a.tolist() == [KEPT, FUSED, KEPT, KEPT, FUSED, KEPT]
    assert b.tolist() == [FUSED, EARLIER, KEPT, FUSED, EARLIER, FUSED]
    (a,) = evit_patch_states([layer_a], num_patches=6, num_prefix=1, fuse=False)
    assert a.tolist() == [KEPT, PRUNED, KEPT, KEPT, PRUNED, KEPT]
    with pytest.raises(TokcompileError, match="exceeds the 6 patches"):
        evit_patch_states([np.array([7])], num_patches=6, num_prefix=1)


def test_paint_patch_states_greys_dropped_and_keeps_kept(picture):
    states = np.array([KEPT, PRUNED, EARLIER, FUSED, KEPT, PRUNED])
    out = paint_patch_states(picture, states, GRID, PATCH)
    assert out.shape == picture.shape and not np.shares_memory(out, picture)
    for i in (0, 4):  # kept: unchanged
        assert np.array_equal(patch_pixels(out, i), patch_pixels(picture, i))
    for i in (1, 2, 5):  # pruned / dropped earlier: grey (R = G = B)
        px = patch_pixels(out, i)
        assert np.allclose(px[..., 0], px[..., 1]) and np.allclose(px[..., 1], px[..., 2])
    assert patch_pixels(out, 2).mean() < patch_pixels(out, 1).mean()  # earlier: darker than pruned here
    fused = patch_pixels(out, 3)
    assert (fused[..., 2] > fused[..., 0]).all()  # blue-grey tint, distinct from plain grey


def test_merge_groups_and_painting(picture):
    # N0 = 1 + 6; token 0 (CLS) stays at 0; patches {0, 1} → 1, {2} → 2, {3, 4, 5} → 3
    merge_map = np.array([0, 1, 1, 2, 3, 3, 3])
    groups = merge_groups(merge_map, num_prefix=1, num_patches=6)
    assert groups.tolist() == [1, 1, 2, 3, 3, 3]
    out = paint_merge_groups(picture, groups, GRID, PATCH, border=1)
    inner = (slice(1, 3), slice(1, 3))  # the 2×2 interior of a 4×4 patch stays clear of any border
    for members in ((0, 1), (3, 4, 5)):
        colors = [patch_pixels(out, i)[inner] for i in members]
        mean = np.concatenate([patch_pixels(picture, i).reshape(-1, 3) for i in members]).mean(axis=0)
        for c in colors:
            assert np.allclose(c, mean)  # every patch of a group: one colour, the group's mean
        edges = patch_pixels(out, members[0])[0, 0]  # corner pixel: on the group's outline
        assert not np.allclose(edges, mean)
    assert np.array_equal(patch_pixels(out, 2), patch_pixels(picture, 2))  # singleton: as the image
    borders = [tuple(patch_pixels(out, i)[0, 0]) for i in (0, 3)]
    assert borders[0] != borders[1]  # each group outlined in its own colour
    with pytest.raises(TokcompileError, match="expected 1 prefix"):
        merge_groups(np.zeros(5, dtype=np.int64), num_prefix=1, num_patches=6)


def test_show_evit_bundle(bundle, tmp_path):
    image = tmp_path / "n01440764_x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 180, 3), dtype=np.uint8)).save(image)
    result = show(bundle("test_vit"), image, tmp_path / "out.png")
    assert result.panels[0] == "input (160×160)"
    assert [t.split(":")[0] for t in result.panels[1:]] == ["block 2", "block 3", "block 4"]
    assert "70/100 patches kept" in result.panels[1]
    with Image.open(result.output) as img:
        assert img.format == "PNG" and img.size[0] > 3 * img.size[1]  # four panels side by side


def test_show_draws_tome_merge_maps(bundle, tmp_path, monkeypatch):
    """A bundle whose outputs carry a merge_map_<block> (the ToMe contract) gets a merge panel."""
    from tokcompile.runtime.runner import BundleRunner

    real = BundleRunner.run

    def with_merge_map(self, images):
        out = {k: v for k, v in real(self, images).items() if not k.startswith("kept_ids_")}
        dest = np.arange(101) - (np.arange(101) >= 2)  # patch 0 (token 1) and patch 1 (token 2) merge
        dest[0] = 0
        out["merge_map_3"] = np.broadcast_to(dest, (images.shape[0], 101)).astype(np.int64)
        return out

    monkeypatch.setattr(BundleRunner, "run", with_merge_map)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((160, 160, 3), 128, dtype=np.uint8)).save(image)
    result = show(bundle("test_vit"), image, tmp_path / "tome.png")
    assert result.panels[1] == "block 3: 100 tokens, 1 merged groups"
    assert result.output.is_file()


def test_show_bad_images(bundle, tmp_path):
    with pytest.raises(TokcompileError, match="does not exist"):
        show(bundle("test_vit"), tmp_path / "missing.png", tmp_path / "o.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(TokcompileError, match="cannot decode image"):
        show(bundle("test_vit"), broken, tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_adavit_skips_are_per_block_and_padding_is_never_a_patch():
    # P = 1. A staged bundle pads kept ids with -1 up to the bucket; AdaViT's block 2 computes
    # patch 1 again although block 1 skipped it (a skipped token returns in the next block).
    layer_1 = np.array([0, 1, 3, -1, -1])
    layer_2 = np.array([0, 2, 3, 4, -1])
    a, b = evit_patch_states([layer_1, layer_2], num_patches=6, num_prefix=1, fuse=False, cumulative=False)
    assert a.tolist() == [KEPT, PRUNED, KEPT, PRUNED, PRUNED, PRUNED]
    assert b.tolist() == [PRUNED, KEPT, KEPT, KEPT, PRUNED, PRUNED]  # never EARLIER


def test_show_ats_bundle_labels_what_ats_does(method_bundle, tmp_path):
    from tokcompile.runtime.runner import load

    directory = method_bundle("ats")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (170, 200, 3), dtype=np.uint8)).save(image)
    result = show(directory, image, tmp_path)  # an existing folder: the figure goes inside it
    assert result.output == tmp_path / f"x-{directory.name}.png" and result.output.is_file()
    assert not any("fused" in t for t in result.panels + result.legend)  # -1 here is bucket padding
    assert "not sampled: dropped by this layer" in result.legend
    assert set(result.legend) <= {"sampled (kept)", "not sampled: dropped by this layer", "dropped by an earlier layer"}
    from tokcompile.data.images import preprocessing

    with Image.open(image) as img:
        x = preprocessing("test_vit", (3, 160, 160))(img.convert("RGB"))[None]
    outputs = load(directory).run(x)
    counts = {k.removeprefix("count_"): int(v[0]) for k, v in outputs.items() if k.startswith("count_")}
    for title in result.panels[1:]:
        block = title.split(":")[0].removeprefix("block ")
        assert title.startswith(f"block {block}: {counts[block] - 1}/100 patches kept")  # count includes CLS


def test_show_output_errors_and_random_weights_on_the_figure(bundle, tmp_path):
    import json
    import os
    import shutil

    from tokcompile.models.weights import file_sha256

    image = tmp_path / "x.png"
    Image.fromarray(np.full((160, 160, 3), 90, dtype=np.uint8)).save(image)
    with pytest.raises(TokcompileError, match=r"folder '.*missing' does not exist; create it or choose another -o"):
        show(bundle("test_vit"), image, tmp_path / "missing" / "o.png")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(TokcompileError, match=r"folder '.*locked' is not writable"):
            show(bundle("test_vit"), image, locked / "o.png")
    copy = tmp_path / "copy"
    shutil.copytree(bundle("test_vit"), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["weights"] = {"source": "random", "seed": 0, "digest": manifest["weights"]["digest"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = show(copy, image, tmp_path / "r.png")
    assert result.caveats == ["RANDOM weights"] and "RANDOM weights: these selections say nothing" in result.title
    (copy / "model.onnx").write_bytes(b"not onnx at all")  # hash updated: only the format is wrong
    manifest["files"]["model.onnx"]["sha256"] = file_sha256(copy / "model.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        TokcompileError, match=r"ONNX Runtime cannot load its ONNX files .*; rebuild the bundle"
    ) as info:
        show(copy, image, tmp_path / "bad.png")
    assert "\n" not in str(info.value) and not (tmp_path / "bad.png").exists()
