"""CLI eval, sweep and show end to end on test_vit, and bad inputs to them (and to compare and bench) as
one line + exit 1."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, run
from PIL import Image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Four labelled PNGs (both layouts) and one file that does not decode."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, name in enumerate(["n01440764_a.png", "n01440764_b.png", "n01443537/c.png", "n01484850/d.png"]):
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (170 + i, 190, 3), dtype=np.uint8)).save(path)
    (folder / "n01440764_broken.jpg").write_bytes(b"not an image")
    return folder


def test_eval(capsys, bundle, images):
    code, out, err = run(capsys, "eval", str(bundle("test_vit")), "--images", str(images), "--batch", "2", "-q")
    assert code == 0, err
    assert "evaluated 4 images (skipped 1 unreadable file), batch 2: bundle fp32, reference dense model fp32" in out
    assert "on 4 labelled images" in out and "top-1 agreement with dense:" in out
    assert re.search(r"features cosine similarity: mean -?[01]\.\d{4}, p5 -?[01]\.\d{4}, min", out)
    assert re.search(r"throughput: bundle [\d.]+ img/s, dense [\d.]+ img/s", out)
    assert "n01440764_broken.jpg" in err  # the warning names the file
    assert out.strip().splitlines()[-1].startswith("PASSED")


@pytest.mark.slow  # a server (or sweep) of its own
def test_sweep_two_points(capsys, checkpoint, images, tmp_path):
    out_dir = tmp_path / "sw"
    argv = ["sweep", "test_vit", "--keep-rate", "0.5,0.7", "--weights", str(checkpoint("test_vit"))]
    argv += ["--images", str(images), "--limit", "3", "--batch", "2", "--resolutions", "128", "-o", str(out_dir)]
    code, out, err = run(capsys, *argv, "-q")
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("PASSED")
    assert re.search(r"^\s+evit\s+0.5\s+101→52→28→16\s", out, re.M)
    assert re.search(r"^\s+dense\s+dense\s+101\s", out, re.M) and re.search(r"lower resolution\s+128 px\s+65\s", out)
    assert sorted(p.name for p in (out_dir / "points").iterdir()) == ["keep_rate-0.5", "keep_rate-0.7"]
    with (out_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["point"], r["value"]) for r in rows] == [
        ("dense", ""),
        ("1", "0.5"),
        ("2", "0.7"),
        ("img_size-128", "128"),
    ]
    for row in rows[1:]:
        assert 0.0 <= float(row["agreement"]) <= 1.0 and -1.0 <= float(row["cosine_mean"]) <= 1.0
        assert float(row["images_per_s"]) > 0 and row["top1"] != ""
        assert (row["images"], row["skipped"]) == ("2", "1")  # --limit 3 picks a, broken, d (spread evenly)
    assert float(rows[3]["gmacs"]) < float(rows[0]["gmacs"])  # 8 × 8 patches instead of 10 × 10
    assert any(r["pareto"] == "True" for r in rows)
    md = (out_dir / "results.md").read_text()
    assert md.count("\n| ") == 5 and "| evit | 0.7 | 160 | 101→72→52→38 |" in md  # header + dense + 2 + baseline
    png = out_dir / "pareto.png"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 1200 and img.size[1] >= 500
    assert png.stat().st_size > 10_000
    # a second sweep into the same folder must not overwrite these results without --force
    before = (out_dir / "results.csv").read_bytes()
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, r"holds the results of an earlier sweep \(results.csv\); .* pass --force")
    assert (out_dir / "results.csv").read_bytes() == before


def test_sweep_output_is_a_file(capsys, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = run(capsys, "sweep", "test_vit", "--keep-rate", "0.5", "-o", str(target))
    assert_user_error(code, err, r"-o '.*notes.txt' exists and is not a directory")
    assert target.read_text() == "mine"


def test_show(capsys, bundle, images, tmp_path):
    out = tmp_path / "show.png"
    code, stdout, err = run(
        capsys, "show", str(bundle("test_vit")), str(images / "n01443537" / "c.png"), "-o", str(out)
    )
    assert code == 0, err
    assert f"wrote {out}: 4 panels" in stdout and "block 4: 34/100 patches kept" in stdout
    with Image.open(out) as img:
        assert img.format == "PNG"


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["sweep", "test_vit", "--keep-rate", "0.9:0.5:0.1"], r"--keep-rate range '0.9:0.5:0.1' is empty"),
        (["sweep", "test_vit", "--keep-rate", "0.5:0.9:0"], r"--keep-rate range step must be > 0"),
        (["sweep", "test_vit", "--keep-rate", "0.5,1.5"], r"--keep-rate values must be in \(0, 1\], got 1.5"),
        (["sweep", "test_vit", "--keep-rate", "0,0.5"], r"--keep-rate values must be in \(0, 1\], got 0"),
        (["sweep", "test_vit", "--r", "16:4:4"], r"--r range '16:4:4' is empty"),
        (["sweep", "test_vit", "--r", "4"], r"method 'evit' has no parameter r"),
        (["sweep", "test_vit", "--method", "none", "--keep-rate", "0.5"], r"reduces no tokens"),
        (["sweep", "deit_xs", "--keep-rate", "0.5"], r"unknown model 'deit_xs'"),
        (["sweep", "test_vit", "--keep-rate", "0.5", "--precision", "fp8"], r"--precision must be one of"),
        (["sweep", "test_vit", "--keep-rate", "0.5", "--images", "nowhere"], r"'nowhere' is not a directory"),
        (["sweep", "test_vit", "--keep-rate", "0.5", "--batch", "0"], r"--batch must be a positive integer"),
        (["sweep", "test_vit"], r"one of the arguments --keep-rate --r --param is required"),
        (["sweep", "test_vit", "--keep-rate", "0.5", "--r", "4"], r"not allowed with argument"),
        (["eval", "nobundle", "--images", "."], r"is not a tokcompile bundle"),
        (["eval", "nobundle"], r"--images"),
        (["show", "nobundle", "x.png"], r"is not a tokcompile bundle"),
        (["compare", "b", "--batch", "0"], r"argument --batch: must be a positive integer, got 0"),
        (["compare", "b", "--batch", "-1"], r"argument --batch: must be a positive integer, got -1"),
        (["compare", "b", "--samples", "-1"], r"argument --samples: must be a positive integer, got -1"),
        (["compare", "b", "--atol", "-1"], r"argument --atol: must be a finite number ≥ 0, got -1"),
        (["compare", "b", "--atol", "nan"], r"argument --atol: must be a finite number ≥ 0, got 'nan'"),
        (["compare", "b", "--min-agreement", "1.5"], r"argument --min-agreement: must be in \[0, 1\], got 1.5"),
        (["compare", "b", "--reference", "fp64"], r"argument --reference: invalid choice: 'fp64'"),
        (["bench", "b", "--batch", "1000000"], r"--batch must be between 1 and 1024 .*got 1000000"),
        (["bench", "b", "--batch", "0"], r"--batch must be positive integers, got '0'"),
        (["bench", "b", "--iters", "-1"], r"argument --iters: must be a positive integer, got -1"),
        (["bench", "b", "--warmup", "-1"], r"argument --warmup: must be an integer ≥ 0, got -1"),
        (["eval", "b", "--images", ".", "--batch", "0"], r"argument --batch: must be a positive integer, got 0"),
        (["eval", "b", "--images", ".", "--batch", "5000"], r"argument --batch: must be at most 1024"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(capsys, tmp_path, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, pattern)
    assert list(tmp_path.iterdir()) == []  # nothing was built or written


def test_eval_and_show_on_bad_files(capsys, bundle, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    code, _, err = run(capsys, "eval", str(bundle("test_vit")), "--images", str(tmp_path), "-q")
    assert f"skipping {tmp_path / 'broken.jpg'}: cannot decode" in err
    err = "\n".join(line for line in err.splitlines() if not line.startswith("skipping "))
    assert_user_error(code, err, r"none of the 1 files could be decoded")
    code, _, err = run(
        capsys, "show", str(bundle("test_vit")), str(tmp_path / "broken.jpg"), "-o", str(tmp_path / "o.png")
    )
    assert_user_error(code, err, r"cannot decode image")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "eval", str(bundle("test_vit")), "--images", str(empty))
    assert_user_error(code, err, r"holds no images")
