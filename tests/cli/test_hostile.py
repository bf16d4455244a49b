"""Hostile input to build/profile/list: one-line errors (exit 1), nothing written, no data lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error, run
from safetensors.torch import save_file

import tokcompile
from tokcompile import TokcompileError, outputs


def build(capsys, checkpoint, *extra: str):
    return run(capsys, "build", "test_vit", "--weights", str(checkpoint("test_vit")), *extra)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", str(2**70)], r"--seed must be an integer in \[0, 4294967295\]"),
        (["--seed", "-5"], r"--seed must be an integer in \[0, 4294967295\]"),
        (["--img-size", "0"], "--img-size must be a positive integer"),
        (["--img-size", "161"], "--img-size 161 is not a multiple of the patch size 16 .*use e.g. 160 or 176"),
        (["--model-arg", "depth=0"], "--model-arg depth must be a positive integer"),
        (["--model-arg", "embed_dim=63"], "timm cannot create 'test_vit' .*embed_dim"),
        (["--method", "avit", "--gamma", "nan"], "--gamma must be a finite number"),
        (["--method", "avit", "--beta", "inf"], "--beta must be a finite number"),
        (["--buckets", "40"], r"apply to methods with per-image token counts \(ats, avit, adavit\)"),
    ],
)
def test_bad_build_flags(capsys, checkpoint, tmp_path, flags, message):
    code, out, err = build(capsys, checkpoint, "-o", str(tmp_path / "out"), *flags)
    assert_user_error(code, err, message)
    assert "FAILED" in out
    assert list(tmp_path.iterdir()) == []


def test_current_directory_and_files_are_never_outputs(capsys, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = build(capsys, checkpoint, "-o", ".", "--force")
    assert_user_error(code, err, "current directory")
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"jpeg")
    code, _, err = build(capsys, checkpoint, "-o", str(photo), "--force")
    assert_user_error(code, err, "existing file.*never replaces")
    assert photo.read_bytes() == b"jpeg" and (tmp_path / "keep.txt").read_text() == "mine"


def test_force_never_deletes_a_users_folder(capsys, checkpoint, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "ch1.tex").write_text("chapter one")
    code, _, err = build(capsys, checkpoint, "-o", str(thesis), "--force")
    assert_user_error(code, err, "did not write .*even with --force")
    assert [p.name for p in thesis.iterdir()] == ["ch1.tex"]
    assert list(tmp_path.iterdir()) == [thesis]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd, k: sd[k].fill_(float("nan")), "holds NaN or Inf values"),
        (lambda sd, k: sd.__setitem__(k, sd[k].to(torch.int64)), "has dtype torch.int64"),
    ],
)
def test_corrupt_weights_are_refused(capsys, models, tmp_path, corrupt, message):
    model, _ = models("test_vit")
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    corrupt(state, "blocks.0.attn.qkv.weight")
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    code, _, err = run(capsys, "build", "test_vit", "--weights", str(path), "-o", str(tmp_path / "out"))
    assert_user_error(code, err, f"blocks.0.attn.qkv.weight.*{message}")
    assert not (tmp_path / "out").exists()


def test_second_build_to_the_same_output_fails_at_once(capsys, checkpoint, tmp_path):
    out = tmp_path / "out"
    with outputs.output_lock(out):  # as a concurrent build holds it
        code, _, err = build(capsys, checkpoint, "-o", str(out))
    assert_user_error(code, err, "another tokcompile process is writing")
    assert not out.exists()


def test_files_appearing_during_the_build_are_not_replaced(checkpoint, tmp_path, monkeypatch):
    import tokcompile.runtime.report as report

    out = tmp_path / "out"
    write_report = report.write_report

    def meanwhile(path, manifest):  # another program writes into -o while we export
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("theirs")
        write_report(path, manifest)

    monkeypatch.setattr(report, "write_report", meanwhile)
    with pytest.raises(TokcompileError, match="did not write"):
        tokcompile.build("test_vit", weights=str(checkpoint("test_vit")), output=out, force=True)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_disk_full_and_unwritable_parent_are_one_line_errors(capsys, checkpoint, tmp_path, monkeypatch):
    import tokcompile.runtime.report as report

    def full(path, manifest):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(report, "write_report", full)
    code, _, err = build(capsys, checkpoint, "-q", "-o", str(tmp_path / "out"))
    assert_user_error(code, err, r"cannot write -o '.*/out': No space left on device; free some disk space")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = build(capsys, checkpoint, "-q", "-o", str(blocker / "out"))
    assert_user_error(code, err, "is inside '.*file', which is a file, not a folder")
    assert blocker.read_text() == "x"


def test_bucket_list_that_misses_the_calibrated_counts_warns(calibrated, caplog):
    """The build's calibration step (``calibrated``: no export before it) on ATS with buckets far
    below the counts it sees; the build copies these warnings and buckets into the manifest (the
    shared bundles' manifests: test_calibrate.py, test_staged.py)."""
    with caplog.at_level("WARNING", logger="tokcompile"):
        found, stages = calibrated("ats", buckets="20,30")
    assert any("more tokens than every --buckets value [20, 30]" in w for w in found.tokens.warnings)
    assert "more tokens than every --buckets value [20, 30]" in caplog.text
    # every boundary stage buckets exactly as given: nothing appended
    assert len(stages) > 2 and [s.buckets for s in stages] == [[20, 30]] * (len(stages) - 1) + [[]]


def test_profile_flags(capsys, tmp_path):
    code, _, err = run(capsys, "profile", "--target", "t", "--iters", "0", "-o", str(tmp_path / "t.yaml"))
    assert_user_error(code, err, "--iters must be ≥ 1")
    code, _, err = run(capsys, "profile", "--target", "t", "-o", str(tmp_path))
    assert_user_error(code, err, "is a folder")
    existing = tmp_path / "t.yaml"
    existing.write_text("mine")
    code, _, err = run(capsys, "profile", "--target", "t", "-o", str(existing))
    assert_user_error(code, err, "exists; pass --force")
    assert existing.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_internal_errors_exit_2_with_a_report_hint(capsys, monkeypatch):
    import tokcompile.cli.list_cmd as list_cmd

    def broken(args):
        raise KeyError("bug")

    monkeypatch.setattr(list_cmd, "run", broken)
    code, out, err = run(capsys, "list", "methods")
    assert code == 2 and "Traceback" in err and "please report" in err.splitlines()[-1]
    assert out.strip().startswith("FAILED")


def test_list_into_a_closed_pipe_is_quiet():
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        f"'{sys.executable}' -m tokcompile.cli.main list models | head -1",
        shell=True,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("deit_t") and len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
