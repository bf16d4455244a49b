"""eval: labels from file locations, top-1 scoring, skipped files, the bundle vs its dense twin."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import tokcompile
from tokcompile import TokcompileError
from tokcompile.data.images import ImageStats, load_batches, preprocessing, spread
from tokcompile.data.labels import UNLABELLED, imagenet_wnids, label_of, labels_of, top1_accuracy, wnid_of
from tokcompile.verify.evaluate import evaluate, evaluate_bundles, score_batches

TEST_VIT = preprocessing("test_vit", (3, 160, 160))

TENCH, GOLDFISH = "n01440764", "n01443537"  # ImageNet-1k classes 0 and 1


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (200, 180, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Both labelled layouts, an unlabelled image and a file that does not decode."""
    write_png(tmp_path / f"{TENCH}_x.png", 0)
    write_png(tmp_path / GOLDFISH / "x.png", 1)
    write_png(tmp_path / "holiday.png", 2)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    return tmp_path


@pytest.fixture(scope="module")
def dense(bundle):
    from tokcompile.runtime.bench import dense_runner

    return dense_runner(bundle("test_vit"))


def test_wnid_list_is_imagenet_1k_sorted():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == TENCH and wnids[1] == GOLDFISH and wnids[-1] == "n15075141"


def test_labels_from_both_folder_layouts(folder):
    assert wnid_of(folder / f"{TENCH}_x.png") == TENCH
    assert wnid_of(folder / GOLDFISH / "x.png") == GOLDFISH
    assert label_of(folder / f"{TENCH}_x.png") == 0
    assert label_of(folder / GOLDFISH / "x.png") == 1
    assert label_of(folder / "holiday.png") == UNLABELLED
    assert label_of(folder / "n99999999_x.png") == UNLABELLED  # a WordNet id outside ImageNet-1k
    assert label_of(folder / "n014407640_x.png") == UNLABELLED  # nine digits: not a WordNet id
    assert label_of(Path(GOLDFISH) / f"{TENCH}_1.JPEG") == 1  # the folder wins (ImageNet train layout)
    assert label_of("ILSVRC2012_val_00000001.JPEG") == UNLABELLED
    assert labels_of([folder / f"{TENCH}_x.png", folder / "holiday.png"]).tolist() == [0, -1]


def test_top1_accuracy_on_known_logits():
    logits = np.array(
        [
            [0.1, 0.2, 0.9, 0.0, 0.0],  # → 2, label 2: right
            [0.5, 0.1, 0.0, 0.0, 0.3],  # → 0, label 0: right
            [0.0, 0.0, 0.0, 1.0, 0.0],  # → 3, unlabelled: ignored
            [0.0, 0.7, 0.0, 0.0, 0.2],  # → 1, label 4: wrong
        ]
    )
    assert top1_accuracy(logits, np.array([2, 0, -1, 4])) == pytest.approx(2 / 3)
    assert top1_accuracy(logits, np.array([-1, -1, -1, -1])) is None


def test_spread_picks_files_evenly():
    files = [Path(f"{i:03d}.png") for i in range(10)]
    assert spread(files, None) == files and spread(files, 20) == files
    assert [p.stem for p in spread(files, 3)] == ["000", "004", "009"]
    assert len(spread(files, 9)) == 9


def test_load_batches_skips_and_counts_undecodable(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stats = ImageStats()
    batches = list(load_batches(files, TEST_VIT, 2, stats))
    assert [x.shape for x, _ in batches] == [(2, 3, 160, 160), (1, 3, 160, 160)]
    assert sum(len(paths) for _, paths in batches) == 3
    assert stats.files == 4 and stats.decoded == 3 and [p.name for p in stats.skipped] == ["broken.jpg"]


def test_folder_without_readable_images_is_one_line_error(bundle, dense, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(TokcompileError, match=r"none of the 1 files could be decoded"):
        evaluate(bundle("test_vit"), images=tmp_path, dense=dense)
    (tmp_path / "broken.jpg").unlink()
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(TokcompileError, match=r"holds no images"):
        evaluate(bundle("test_vit"), images=tmp_path, dense=dense)


def test_evaluate_tiny_folder(bundle, dense, folder, caplog):
    with caplog.at_level("WARNING", logger="tokcompile"):
        result = evaluate(bundle("test_vit"), images=folder, batch=2, dense=dense)
    assert "broken.jpg" in caplog.text
    assert (result.images, result.skipped, result.labelled) == (3, 1, 2)
    # The figures recomputed here from both models' outputs on the same preprocessed images.
    files = sorted(p for p in folder.rglob("*.png"))
    x = np.concatenate([b for b, _ in load_batches(files, preprocessing("test_vit", (3, 160, 160)), 8)])
    ours = tokcompile.load(bundle("test_vit")).run(x)
    theirs = dense(x, ("logits", "features"))
    labels = np.array([{f"{TENCH}_x.png": 0, "x.png": 1}.get(p.name, -1) for p in files])
    top, dense_top = ours["logits"].argmax(1), theirs["logits"].argmax(1)
    a, b = ours["features"].astype(np.float64), theirs["features"].astype(np.float64)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert result.agreement == pytest.approx(np.mean(top == dense_top))
    assert result.cosine_mean == pytest.approx(cosines.mean(), abs=1e-6)
    assert result.cosine_min == pytest.approx(cosines.min(), abs=1e-6)
    assert result.top1 == pytest.approx(np.mean(top[labels >= 0] == labels[labels >= 0]))
    assert result.dense_top1 == pytest.approx(np.mean(dense_top[labels >= 0] == labels[labels >= 0]))
    assert result.images_per_s > 0 and result.dense_images_per_s > 0 and result.speedup > 0
    assert result.method == "evit" and result.precision == "fp32" and not result.random_inputs
    text = "\n".join(result.lines())
    assert "skipped 1 unreadable file" in text and "on 2 labelled images" in text
    assert "1 images carry no ImageNet-1k label" in text and "unreadable files skipped: broken.jpg" in text


def test_evaluate_random_inputs(bundle, dense, caplog):
    with caplog.at_level("WARNING", logger="tokcompile"):
        result = evaluate(bundle("test_vit"), batch=3, limit=5, dense=dense)
    assert "random inputs" in caplog.text
    assert result.random_inputs and result.images == 5 and result.top1 is None and result.skipped == 0
    assert any("unrepresentative" in line for line in result.lines())
    assert not any("label" in line for line in result.lines())


def test_dense_against_itself_agrees(dense, folder):
    files = sorted(p for p in folder.rglob("*.png"))
    scores = score_batches({"dense": dense, "copy": dense}, load_batches(files, TEST_VIT, 2))
    copy, ref = scores["copy"], scores["dense"]
    assert copy.images == ref.images == 3 and copy.agree == ref.agree == 3 and copy.labelled == 2
    assert copy.correct == ref.correct
    assert np.allclose(np.concatenate(copy.cosines), 1.0, atol=1e-6)
    assert copy.seconds > 0 and ref.images_per_s > 0


def test_evaluate_bundles_share_one_dense_pass(bundle, dense):
    first, second = evaluate_bundles([bundle("test_vit")] * 2, batch=2, limit=4, dense=dense, warn_random=False)
    assert first.images == second.images == 4
    assert first.agreement == second.agreement and first.cosine_mean == pytest.approx(second.cosine_mean)
    assert first.dense_images_per_s == second.dense_images_per_s  # one dense measurement for both


def test_fp16_bundle_is_evaluated_against_the_fp32_dense_model(bundle, folder, monkeypatch):
    import tokcompile.runtime.bench as bench_module

    exported = []
    real = bench_module.dense_runner

    def spy(directory, threads=None, precision=None, weights=None):
        exported.append(precision)
        return real(directory, threads, precision, weights)

    monkeypatch.setattr(bench_module, "dense_runner", spy)
    result = evaluate(bundle("test_vit", precision="fp16"), images=folder, batch=2)
    assert exported == ["fp32", "fp16"]  # the quality reference, then the throughput twin
    assert (result.precision, result.reference_precision) == ("fp16", "fp32")
    assert -1.0 <= result.cosine_min <= result.cosine_p5 <= 1.0 and result.cosine_min <= result.cosine_mean
    text = "\n".join(result.lines())
    assert "bundle fp16, reference dense model fp32" in text and "x, both fp16)" in text
    assert f"p5 {result.cosine_p5:.4f}, min {result.cosine_min:.4f}" in text
    same = evaluate(bundle("test_vit", precision="fp16"), images=folder, batch=2, reference="same")
    assert same.reference_precision == "fp16" and exported[2:] == ["fp16"]


def test_random_heads_and_weights_tag_every_figure(models):
    from tokcompile.methods import apply_method, get_method, resolve_config
    from tokcompile.runtime.caveats import caveats
    from tokcompile.verify.compare import CompareReport
    from tokcompile.verify.evaluate import EvalResult

    model, spec = models("test_vit")
    m = get_method("adavit")
    _, info = apply_method(model, spec, m, resolve_config(m, spec, {}), "fp32")  # no trained heads

    def manifest(source: str, warnings: list[str]) -> SimpleNamespace:  # the two fields caveats reads
        return SimpleNamespace(weights=SimpleNamespace(source=source), method=SimpleNamespace(warnings=warnings))

    tags = caveats(manifest("random", info["method_warnings"]))
    assert tags == ["RANDOM weights", "RANDOM decision heads"]
    assert caveats(manifest("file", [])) == []
    result = EvalResult(
        "b", "adavit", {}, "fp32", 4, 8, 0, 8, False, "random", 0.5, 0.6, 0.9, 0.9, 0.8, 240.0, 100.0, 0.85,
        caveats=tags,
    )  # fmt: skip
    figures = [line for line in result.lines() if ":" in line and not line.startswith(("evaluated", "note"))]
    assert len(figures) == 4 and all(line.endswith("[RANDOM weights, RANDOM decision heads]") for line in figures)
    report = CompareReport("fp32", "same", "fp32", 1e-4, 0.95, 8, 0.1, 0.01, True, 8, 0.1, 1.0, caveats=tags)
    report.layer_agreement, report.layer_overlap = {"kept_ids_3": 1.0}, {"kept_ids_3": 1.0}
    tagged_lines = [line for line in report.lines() if line.startswith(("logits on all", "output effect", "kept_ids"))]
    assert len(tagged_lines) == 3 and all(
        line.endswith("[RANDOM weights, RANDOM decision heads]") for line in tagged_lines
    )
