"""sweep: value ranges, the Pareto front, validation before any build, and the written results."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tokcompile import TokcompileError
from tokcompile.verify.evaluate import EvalResult
from tokcompile.verify.sweep import parse_values, point_name, validate
from tokcompile.verify.sweep_results import (
    SweepPoint,
    SweepResult,
    pareto_front,
    plot_pareto,
    write_csv,
    write_markdown,
)


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("0.5:0.9:0.1", "rate", [0.5, 0.6, 0.7, 0.8, 0.9]),
        ("0.1:0.35:0.1", "rate", [0.1, 0.2, 0.3]),
        ("0.7:0.7:0.1", "rate", [0.7]),
        ("0.3:1:0.35", "rate", [0.3, 0.65, 1.0]),
        ("0.5,0.7", "rate", [0.5, 0.7]),
        (" 0.5, 0.7 ,0.5", "rate", [0.5, 0.7]),
        ("4:16:4", "int", ["4", "8", "12", "16"]),
        ("4:14:4", "int", ["4", "8", "12"]),
        ("4,8", "int", ["4", "8"]),
        ("16:-1;8:-1", "int", ["16:-1", "8:-1"]),
        ("13,13,8;4", "int", ["13,13,8", "4"]),
    ],
)
def test_parse_values(text, kind, expected):
    values = parse_values(text, "--flag", kind)
    assert values == expected
    assert [repr(v) for v in values] == [repr(v) for v in expected]  # no 0.6000000000000001


def test_parse_range_has_no_float_drift():
    values = parse_values("0.5:0.9:0.1", "--keep-rate", "rate")
    assert [str(v) for v in values] == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    assert len(parse_values("0.01:1:0.01", "--keep-rate", "rate")) == 100


@pytest.mark.parametrize(
    "text, kind, pattern",
    [
        ("0.9:0.5:0.1", "rate", r"--flag range '0.9:0.5:0.1' is empty \(start > stop\)"),
        ("0.5:0.9:0", "rate", r"step must be > 0"),
        ("0.5:0.9:-0.1", "rate", r"step must be > 0"),
        ("0.5,1.2", "rate", r"values must be in \(0, 1\], got 1.2"),
        ("0:0.5:0.1", "rate", r"values must be in \(0, 1\], got 0"),
        ("0.5:1.2:0.1", "rate", r"values must be in \(0, 1\], got 1.1"),
        ("abc", "rate", r"must be start:stop:step or a comma list"),
        ("0.5:0.9", "rate", r"range must be start:stop:step"),
        ("a:b:c", "rate", r"must hold numbers"),
        (",", "rate", r"names no values"),
        ("4:16:2.5", "int", r"range must hold integers"),
        ("16:4:4", "int", r"is empty"),
        ("0.001:1:0.001", "rate", r"at most 100"),
    ],
)
def test_parse_values_rejects(text, kind, pattern):
    with pytest.raises(TokcompileError, match=pattern) as info:
        parse_values(text, "--flag", kind)
    assert "\n" not in str(info.value)


def test_pareto_front():
    points = [
        (100.0, 0.90),  # 0 dense: slowest, best
        (150.0, 0.85),  # 1 front
        (140.0, 0.80),  # 2 dominated by 1
        (200.0, 0.60),  # 3 front: fastest
        (150.0, 0.85),  # 4 equal to 1: both kept
        (90.0, 0.95),  # 5 front: most accurate
        (float("nan"), 1.0),  # 6 never on the front
        (200.0, 0.50),  # 7 dominated by 3 (same x, lower y)
    ]
    assert pareto_front(points) == [5, 0, 1, 4, 3]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [0]


def test_validate_before_any_build():
    validate("test_vit", "evit", "keep_rate", [0.5, 0.7], None)
    with pytest.raises(TokcompileError, match=r"method 'evit' has no parameter r"):
        validate("test_vit", "evit", "r", ["4"], None)
    with pytest.raises(TokcompileError, match=r"reduces no tokens"):
        validate("test_vit", "none", "keep_rate", [0.5], None)
    with pytest.raises(TokcompileError, match=r"--precision must be one of"):
        validate("test_vit", "evit", "keep_rate", [0.5], "fp8")
    with pytest.raises(TokcompileError, match=r"unknown model 'deit_xs'"):
        validate("deit_xs", "evit", "keep_rate", [0.5], None)
    assert point_name("r", "16:-1") == "r-16_-1" and point_name("keep_rate", 0.5) == "keep_rate-0.5"


def _result(agreement: float, images_per_s: float, top1=None, size=(160, 160)) -> EvalResult:
    return EvalResult(
        bundle="b",
        method="evit",
        params={},
        precision="fp32",
        batch=4,
        images=8,
        skipped=1,
        labelled=8 if top1 is not None else 0,
        random_inputs=False,
        weights="file",
        top1=top1,
        dense_top1=0.9 if top1 is not None else None,
        agreement=agreement,
        cosine_mean=0.98,
        cosine_min=0.9,
        images_per_s=images_per_s,
        dense_images_per_s=100.0,
        cosine_p5=0.95,
        input_size=size,
    )


def test_written_results_from_a_synthetic_sweep(tmp_path):
    points = [
        SweepPoint(0.5, Path("p/keep_rate-0.5"), [101, 52], 0.02, 1.6, _result(0.7, 180.0, top1=0.6)),
        SweepPoint(0.7, Path("p/keep_rate-0.7"), [101, 72], 0.03, 1.3, _result(0.9, 140.0, top1=0.8)),
        SweepPoint(0.9, Path("p/keep_rate-0.9"), [101, 92], 0.035, 1.1, _result(0.95, 120.0, top1=0.7)),
    ]
    lowres = [
        SweepPoint(
            "128", Path("b/img_size-128"), [65], 0.025, 1.6, _result(0.85, 150.0, 0.75, (128, 128)), "lower resolution"
        )
    ]
    result = SweepResult(
        tmp_path, "test_vit", "evit", "keep_rate", points, 0.9, 100.0, 0.04, 101, "top1", [], baselines=lowres
    )
    rows = result.rows()
    result.front = pareto_front([(r["images_per_s"], result.y(r)) for r in rows])
    assert result.front == [0, 2, 4, 1]  # dense, 0.7, 128 px, 0.5; 0.9 is slower and worse than 0.7
    write_csv(result, tmp_path / "results.csv")
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("point,series,method,param,value,img_size,bundle,tokens,gmacs")
    assert lines[1].startswith("dense,dense,none,keep_rate,,,,101,") and lines[2].startswith(
        "1,evit,evit,keep_rate,0.5,160,"
    )
    assert lines[5].startswith("img_size-128,lower resolution,none,img_size,128,128,b/img_size-128,65,0.025,")
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["True", "True", "True", "False", "True"]
    md = write_markdown(result, tmp_path / "results.md", "imgs").read_text()
    assert (
        "| evit | 0.7 | 160 | 101→72 | 0.030 | 80.00% | 90.00% | 0.9800 / 0.9500 / 0.9000 | 140.0 | 1.40x | ★ |" in md
    )
    assert "| lower resolution | 128 px | 128 | 65 | 0.025 | 75.00% | 85.00% |" in md
    assert "skipped 1 unreadable file)" in md
    png = plot_pareto(result, tmp_path / "pareto.png")
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 1200 and img.size[1] >= 500  # two panels
    assert png.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "results.csv", "results.md"]  # no temp files


def test_lower_resolutions_span_the_points_gmacs():
    from reference_vit import vit_gmacs

    from tokcompile.verify.sweep import baseline_sizes, dense_gmacs_at

    spec = validate("test_vit", "evit", "keep_rate", [0.5], None)
    hand = {k: vit_gmacs(16 * k, 16, 64, 6, 1000, mlp=3) for k in range(2, 10)}  # 2..9 patch rows
    assert dense_gmacs_at("test_vit", {}, (96, 96)) == pytest.approx(hand[6], rel=1e-9)
    # points between the 6- and 8-row models: 7 rows inside the range, 6 below it and 8 above it
    lo, hi = (hand[6] + hand[7]) / 2, (hand[7] + hand[8]) / 2
    assert baseline_sizes(spec, {}, [lo, hi], 3) == [(96, 96), (112, 112), (128, 128)]
    assert baseline_sizes(spec, {}, [lo, hi], 2) == [(96, 96), (128, 128)]  # thinned, ends kept
    assert baseline_sizes(spec, {}, [lo, hi], 0) == []
    assert baseline_sizes(spec, {}, [hand[2] / 2], 3) == [(32, 32)]  # below every size: the smallest


def test_resolutions_flag():
    from tokcompile.verify.sweep import parse_resolutions

    spec = validate("test_vit", "evit", "keep_rate", [0.5], None)
    assert parse_resolutions(None, spec) is None and parse_resolutions("auto", spec) is None
    assert parse_resolutions("none", spec) == [] and parse_resolutions("96,128,96", spec) == [(96, 96), (128, 128)]
    for bad in ("100", "160", "abc", "0"):
        with pytest.raises(TokcompileError, match="--resolutions"):
            parse_resolutions(bad, spec)
