"""tokcompile/outputs.py: what may be replaced, atomic publishing, locks, leftovers, modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tokcompile import TokcompileError, outputs


def owned_by_marker(directory: Path):
    """A toy 'kind': a directory is ours when it has MARKER listing its files."""
    marker = directory / "MARKER"
    return set(marker.read_text().split()) | {"MARKER"} if marker.is_file() else None


def make_owned(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    (directory / "MARKER").write_text("\n".join(files))


def test_missing_and_empty_outputs_are_writable(tmp_path):
    outputs.check_directory(tmp_path / "new", owned_by_marker, "thing", force=False)
    (tmp_path / "empty").mkdir()
    outputs.check_directory(tmp_path / "empty", owned_by_marker, "thing", force=False)


def test_user_folder_is_never_replaced_even_with_force(tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "ch1.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(TokcompileError, match="did not write.*even with --force"):
            outputs.check_directory(thesis, owned_by_marker, "thing", force=force)
    assert (thesis / "ch1.tex").read_text() == "years of work"


def test_regular_file_and_current_directory_are_refused(tmp_path, monkeypatch):
    f = tmp_path / "photo.jpg"
    f.write_bytes(b"jpeg")
    with pytest.raises(TokcompileError, match="existing file.*never replaces"):
        outputs.check_directory(f, owned_by_marker, "thing", force=True)
    monkeypatch.chdir(tmp_path)
    for path in (Path("."), Path(".."), Path("/")):
        with pytest.raises(TokcompileError, match="current directory or one of its parents"):
            outputs.check_directory(path, owned_by_marker, "thing", force=True)


def test_own_output_needs_force_and_extra_files_block_it(tmp_path):
    out = tmp_path / "out"
    make_owned(out, {"a.onnx": "x"})
    with pytest.raises(TokcompileError, match="holds a different thing.*--force"):
        outputs.check_directory(out, owned_by_marker, "thing", force=False)
    outputs.check_directory(out, owned_by_marker, "thing", force=True)
    outputs.check_directory(out, owned_by_marker, "thing", force=False, same=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TokcompileError, match=r"also holds files tokcompile did not write \(notes.txt\)"):
        outputs.check_directory(out, owned_by_marker, "thing", force=True)


def test_publish_replaces_atomically_and_applies_umask(tmp_path):
    final = tmp_path / "out"
    make_owned(final, {"old.txt": "old"})
    old_mask = os.umask(0o027)
    try:
        with outputs.staging_dir(final) as tmp:
            (tmp / "new.txt").write_text("new")
            (tmp / "sub").mkdir()
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o700  # mkdtemp's mode while private
            outputs.publish(tmp, final)
    finally:
        os.umask(old_mask)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt", "sub"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o750
    assert stat.S_IMODE((final / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((final / "new.txt").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the replaced copy is gone


def test_failure_inside_staging_leaves_nothing_and_os_errors_are_one_line(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with outputs.staging_dir(final) as tmp:
            (tmp / "half.onnx").write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(TokcompileError, match="cannot write -o.*No space left on device; free some disk space"):
        with outputs.staging_dir(final):
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_processes_are_removed(tmp_path):
    final = tmp_path / "out"
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
        "from tokcompile import outputs\n"
        "with outputs.staging_dir(Path(sys.argv[1])) as tmp:\n"
        "    (tmp / 'big.onnx').write_bytes(b'0' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code, str(final), str(repo)], timeout=60)
    assert proc.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(outputs.TMP_PREFIX)]
    assert len(left) == 1 and not final.exists()
    with outputs.staging_dir(final) as tmp:
        assert [p for p in tmp_path.iterdir() if p.name.startswith(outputs.TMP_PREFIX)] == [tmp]


def test_second_writer_fails_at_once(tmp_path):
    out = tmp_path / "out"
    with outputs.output_lock(out):
        with pytest.raises(TokcompileError, match="another tokcompile process is writing -o"):
            with outputs.output_lock(out):
                pass
    with outputs.output_lock(out):  # released: usable again, and no lock file is left behind
        pass
    assert list(tmp_path.iterdir()) == []


def test_write_file_is_atomic_and_needs_force(tmp_path):
    path = tmp_path / "results.csv"
    outputs.write_file(path, "a,b\n", force=False)
    with pytest.raises(TokcompileError, match="exists; pass --force"):
        outputs.write_file(path, "c,d\n", force=False)
    assert path.read_text() == "a,b\n"
    outputs.write_file(path, "c,d\n", force=True)
    assert path.read_text() == "c,d\n"
    with pytest.raises(TokcompileError, match="is a folder"):
        outputs.write_file(tmp_path, "x", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]
