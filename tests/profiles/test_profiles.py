"""Hardware profiles: YAML round trip, schema validation, shipped profiles, measurement."""

from __future__ import annotations

import logging

import pytest
import yaml

from tokcompile import TokcompileError
from tokcompile.profiles import Curve, Profile, from_dict, load_profile, save_profile, shipped


def sample() -> Profile:
    return Profile(
        name="unit",
        measured=True,
        backend="onnxruntime",
        target={"kind": "cpu", "description": "test", "cores": 2},
        alignment=1,
        curves=[
            Curve(384, 6, 16, [8, 64, 128], [10.0, 40.0, 90.0]),
            Curve(384, 6, 1, [8, 64, 128], [1.0, 3.0, 6.0]),
        ],
    )


def test_round_trip(tmp_path):
    path = tmp_path / "p.yaml"
    save_profile(sample(), path)
    loaded = load_profile(str(path))
    assert loaded.to_dict() == sample().to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]  # no temporary file left behind


def test_latency_interpolates_and_scales():
    lat16 = sample().latency(384, 16)
    assert lat16(8) == 10.0 and lat16(96) == pytest.approx(65.0)
    assert sample().latency(384, 1)(64) == 3.0
    assert sample().latency(768, 16)(64) == pytest.approx(160.0)  # nearest width, scaled by width²


def test_shipped_profiles_load_and_unmeasured_ones_warn(caplog):
    names = shipped()
    assert {"h100", "h200"} <= set(names)
    measured = [n for n in names if load_profile(n).measured]
    assert measured, "a measured CPU profile must ship"
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        gpu = load_profile("h100")
    assert not gpu.measured and "UNMEASURED" in caplog.text
    step = gpu.latency(384, 1)
    assert step(1) == step(64) < step(65)  # staircase over 64-token tiles


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="v0"), "'schema' must be"),
        (lambda d: d.pop("name"), "'name' must be a str"),
        (lambda d: d.update(alignment=0), "'alignment' must be a positive integer"),
        (lambda d: d["curves"][0].update(tokens=[8, 8, 9]), "strictly increasing"),
        (lambda d: d["curves"][0].update(latency_ms=[1.0]), "equal length"),
        (lambda d: d["curves"][0].update(width=-3), "curves\\[0\\].width"),
        (lambda d: d["curves"][0].update(latency_ms=[1.0, -2.0, 3.0]), "positive finite numbers"),
        (lambda d: d["curves"][0].update(latency_ms=[1.0, float("nan"), 3.0]), "positive finite numbers"),
        (lambda d: d["curves"][0].update(latency_ms=[1.0, float("inf"), 3.0]), "positive finite numbers"),
        (lambda d: d.update(curves=[]), "at least one curve"),
    ],
)
def test_schema_validation(mutate, message):
    data = sample().to_dict()
    mutate(data)
    with pytest.raises(TokcompileError, match=message):
        from_dict(data, "t")


def test_unknown_and_malformed(tmp_path):
    with pytest.raises(TokcompileError, match="unknown profile 'tpu9'; shipped: .*h100"):
        load_profile("tpu9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(TokcompileError, match="is not valid YAML"):
        load_profile(str(bad))
    with pytest.raises(TokcompileError, match="does not exist"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_profile_command_measures_a_curve(tmp_path, capsys):
    from tokcompile.cli.main import main

    out = tmp_path / "mine.yaml"
    code = main(
        [
            "profile",
            "--target",
            "mine",
            "-o",
            str(out),
            "--widths",
            "64",
            "--batch",
            "1",
            "--tokens",
            "8,16,32",
            "--iters",
            "1",
            "-q",
        ]
    )
    assert code == 0
    data = yaml.safe_load(out.read_text())
    assert data["measured"] is True and data["target"]["kind"] == "cpu"
    (curve,) = data["curves"]
    assert curve["tokens"] == [8, 16, 32] and all(v > 0 for v in curve["latency_ms"])
    assert load_profile(str(out)).name == "mine"
    code = main(["profile", "--target", "x", "--tokens", "9:3:1"])
    assert code == 1 and "empty" in capsys.readouterr().err
