"""CLI: each command end to end on small bundles, and every bad input as one line + exit 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cli_helpers import assert_user_error, run


def test_build_inspect_compare_bench(capsys, checkpoint, tmp_path):
    out = tmp_path / "tv"
    code, stdout, _ = run(capsys, "build", "test_vit", "--weights", str(checkpoint("test_vit")), "-o", str(out), "-q")
    assert code == 0 and "101 → 72 → 52 → 38" in stdout and stdout.strip().splitlines()[-1].startswith("PASSED")
    code, stdout, _ = run(capsys, "inspect", str(out))
    assert code == 0 and "ideal speed-up" in stdout and "model.onnx" in stdout
    code, stdout, _ = run(capsys, "compare", str(out), "--batch", "2", "--samples", "1")
    assert code == 0 and "kept_ids_3: identical kept-token sets for 100.0%" in stdout
    assert stdout.strip().splitlines()[-1].startswith("PASSED")
    code, stdout, _ = run(capsys, "compare", str(out), "--batch", "2", "--samples", "1", "--atol", "1e-12")
    assert code == 1 and stdout.strip().splitlines()[-1].startswith("FAILED")
    code, stdout, _ = run(capsys, "inspect", str(out))
    assert "measured:  not yet" in stdout
    code, stdout, _ = run(capsys, "bench", str(out), "--batch", "1,2", "--iters", "2", "--warmup", "0")
    assert code == 0 and "batch 2: reduced/dense throughput ratio" in stdout
    measured = json.loads((out / "bench.json").read_text())  # the figures travel with the bundle
    printed = float(stdout.split("batch 2: reduced/dense throughput ratio ")[1].split("x")[0])
    assert measured["speedup_vs_dense"]["2"] == pytest.approx(printed, abs=1e-3)
    code, stdout, _ = run(capsys, "inspect", str(out))
    assert code == 0 and f"measured:  reduced/dense {measured['speedup_vs_dense']['1']:.3f}x at batch 1" in stdout
    # a recorded bundle still verifies, and a rebuild may replace it (bench.json is tokcompile's)
    code, _, _ = run(capsys, "build", "test_vit", "--weights", str(checkpoint("test_vit")), "-o", str(out), "-q")
    assert code == 0 and not (out / "bench.json").exists()


def test_list(capsys):
    code, stdout, _ = run(capsys, "list", "methods")
    assert code == 0 and "evit" in stdout
    code, stdout, _ = run(capsys, "list", "models")
    assert code == 0 and "deit_s   deit_small_patch16_224" in stdout and "--all" in stdout
    code, stdout, _ = run(capsys, "list", "models", "--all")
    names = stdout.splitlines()
    assert code == 0 and {"deit_small_patch16_224", "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"} <= set(
        names
    )


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["build", "deit_xs"], r"unknown model 'deit_xs'; did you mean"),
        (["build", "test_vit", "--method", "evitt"], r"unknown method 'evitt'; did you mean evit"),
        (["build", "test_vit", "--keep-rate", "1.5"], r"--keep-rate must be in \(0, 1\], got 1.5"),
        (["build", "test_vit", "--keep-rate", "0"], r"--keep-rate must be in \(0, 1\]"),
        (["build", "test_vit", "--keep-rate", "abc"], r"invalid float value: 'abc'"),
        (["build", "test_vit", "--layers", "1,9"], r"block 9 is out of range; this model has blocks 0..5"),
        (["build", "test_vit", "--layers", "1,x"], r"--layers must be integers"),
        (["build", "test_vit", "--layers", "2,2"], r"must not repeat"),
        (["build", "test_vit2"], r"no class token"),
        (["build", "test_vit", "--precision", "fp8"], r"--precision must be one of fp32, fp16, bf16"),
        (["build", "test_vit", "--backend", "tvm"], r"--backend must be one of"),
        (["build", "test_vit", "--weights", "/nonexistent/w.pth"], r"does not exist"),
        (["build", "test_vit", "--method", "none", "--keep-rate", "0.5"], r"method 'none' takes no parameters"),
        (["bench", "x", "--batch", "1,a"], r"--batch must be comma-separated integers"),
        (["list", "things"], r"invalid choice"),
        (["build", "test_vit", "--buckets", "64"], r"--buckets apply to methods with per-image token counts"),
        (["build", "test_vit", "--method", "ats", "--max-buckets", "0"], r"--max-buckets must be ≥ 1"),
        (["build", "test_vit", "--method", "tome", "--r", "-2"], r"--r must not be negative, got -2"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(capsys, tmp_path, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    code, _, err = (
        run(capsys, *argv, "--weights", "random")
        if argv[0] == "build" and "--weights" not in argv
        else run(capsys, *argv)
    )
    assert_user_error(code, err, pattern)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_mismatched_checkpoints(capsys, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run(capsys, "build", "test_vit", "--weights", str(bad), "-o", str(tmp_path / "o"))
    assert_user_error(code, err, r"cannot be read")
    from safetensors.torch import save_file

    from tokcompile.models import create_model

    other = create_model("deit_t", weights="random")[0]
    wrong = tmp_path / "deit_t.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wrong))
    code, _, err = run(capsys, "build", "test_vit", "--weights", str(wrong), "-o", str(tmp_path / "o"))
    assert_user_error(code, err, r"pos_embed \(checkpoint \(1, 197, 192\), model \(1, 101, 64\)\) has width 192")
    assert not (tmp_path / "o").exists()


def test_output_holding_a_different_bundle(capsys, bundle, checkpoint, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle("test_vit"), out)
    code, _, err = run(
        capsys, "build", "test_vit", "--weights", str(checkpoint("test_vit")), "--keep-rate", "0.5", "-o", str(out)
    )
    assert_user_error(code, err, r"holds a different tokcompile bundle .*--force")


@pytest.mark.parametrize("command", ["compare", "bench", "inspect"])
def test_commands_on_non_bundles_and_tampered_bundles(capsys, bundle, tmp_path, command):
    code, _, err = run(capsys, command, str(tmp_path))
    assert_user_error(code, err, r"is not a tokcompile bundle")
    out = tmp_path / "b"
    shutil.copytree(bundle("test_vit"), out)
    (out / "report.md").write_text("edited")
    code, _, err = run(capsys, command, str(out))
    assert_user_error(code, err, r"report.md' fails its sha256 check")


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tokcompile.cli.main", "inspect", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("tokcompile: error:") and "Traceback" not in proc.stderr
