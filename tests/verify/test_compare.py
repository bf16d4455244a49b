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
    assert report.passed and report.polygraphy_passed and report.failures() == []
    assert report.images == 6 and report.precision == "fp32" and report.atol == 1e-4
    assert (report.reference, report.reference_precision, report.min_agreement) == ("same", "fp32", 0.95)
    assert report.max_abs <= 1e-4 and report.top1_agreement == 1.0 and report.agreeing == 6
    assert report.layer_agreement == {"kept_ids_2": 1.0, "kept_ids_3": 1.0, "kept_ids_4": 1.0}
    assert report.cosine_min > 0.9999 and report.output == "features"


def test_compare_fails_outside_tolerance(bundle):
    report = compare(bundle("test_vit"), batch=2, samples=1, atol=1e-12)
    assert not report.passed and report.polygraphy_passed is False
    (failure,) = report.failures()
    assert failure.startswith("logits check: max |Δ|") and "> --atol 1e-12 on the 2 images" in failure


def test_compare_reports_a_selection_flip(bundle, monkeypatch):
    """A reference whose layer-3 selection differs must show up as a flip in that layer."""
    import torch

    import tokcompile.runtime.reference as api

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
    # the verdict covers the selections: the logits agree, layer 3 does not
    assert not report.passed and report.agreeing == 0 and report.polygraphy_passed is None
    selection, logits = report.failures()
    assert selection.startswith("selection check: kept_ids_3 identical on 0.0% of images < --min-agreement 95%")
    assert "output cosine on the flipped images 1.0000" in selection and "--reference same" in selection
    assert logits.startswith("logits check: no image kept identical tokens in every layer")
    assert report.layer_flip_cosine == {"kept_ids_3": pytest.approx(1.0)}


def test_fp16_bundle_is_compared_with_fp32(bundle):
    report = compare(bundle("test_vit", precision="fp16"), batch=2, samples=2)
    assert (report.precision, report.reference, report.reference_precision) == ("fp16", "fp32", "fp32")
    assert report.atol == 5e-2 and report.min_agreement == 0.75
    assert report.lines()[0] == "compared 4 images: the bundle (fp16) vs fp32 PyTorch (--reference fp32)"
    same = compare(bundle("test_vit", precision="fp16"), batch=2, samples=2, reference="same")
    assert same.reference_precision == "fp16"
    assert report.max_abs_agreeing is None or report.max_abs_agreeing <= report.max_abs
    with pytest.raises(TokcompileError, match="--reference must be one of fp32, same, got 'fp64'"):
        compare(bundle("test_vit", precision="fp16"), reference="fp64")


def test_weights_override_for_a_machine_without_the_checkpoint(bundle, checkpoint, models, tmp_path):
    import json
    import shutil

    from safetensors.torch import save_file

    moved = tmp_path / "bundle"
    shutil.copytree(bundle("test_vit"), moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["weights"]["path"] = str(tmp_path / "elsewhere" / "test_vit.safetensors")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TokcompileError, match=r"is not on this machine; pass a copy of it with --weights PATH"):
        compare(moved, batch=2, samples=1)
    assert compare(moved, batch=2, samples=1, weights=str(checkpoint("test_vit"))).passed
    other = tmp_path / "other.safetensors"
    state = {k: v.clone().contiguous() for k, v in models("test_vit")[0].state_dict().items()}
    state["head.bias"] += 1.0
    save_file(state, str(other))
    with pytest.raises(TokcompileError, match=r"--weights '.*other.safetensors' holds other weights"):
        compare(moved, batch=2, samples=1, weights=str(other))


def test_compare_on_image_folder_skips_undecodable(bundle, tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (200, 180, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with caplog.at_level("WARNING", logger="tokcompile"):
        report = compare(bundle("test_vit"), images=tmp_path, batch=2)
    assert report.images == 3 and report.passed
    assert report.notes == []  # real images: no random-input note
    assert "broken.jpg" in caplog.text


def test_compare_on_folder_without_images(bundle, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(TokcompileError, match="holds no images"):
        compare(bundle("test_vit"), images=tmp_path)


def test_bench_times_reduced_and_dense(bundle):
    report = bench(bundle("test_vit"), batches=[1, 2], iters=2, warmup=1)
    rows = report.rows
    assert [(r.batch, r.name) for r in rows] == [(1, "reduced"), (1, "dense"), (2, "reduced"), (2, "dense")]
    assert all(r.images_per_s > 0 and r.p50_ms > 0 for r in rows)
    assert ratio(rows, 2) > 0
    assert report.caveats == []  # the fixture's weights come from a file
    with pytest.raises(TokcompileError, match=r"--batch must be between 1 and 1024 .*got 1000000"):
        bench(bundle("test_vit"), batches=[1000000])
    with pytest.raises(TokcompileError, match=r"--iters must be ≥ 1 and --warmup ≥ 0, got -1 and 3"):
        bench(bundle("test_vit"), iters=-1)


def test_compare_cli_failure_says_which_check_without_polygraphy_noise(capsys, bundle):
    from cli_helpers import run

    code, out, err = run(capsys, "compare", str(bundle("test_vit")), "--samples", "1", "--atol", "0", "--progress")
    assert code == 1 and out.strip().splitlines()[-1].startswith("FAILED")
    assert "FAILED logits check: max |Δ|" in out and "try a higher --precision, a larger --atol" in out
    assert "[E]" not in out + err and "colored" not in out + err  # Polygraphy's own lines: only with -v
    assert "compare " in err  # the progress bar
