"""The bundle directory: manifest, files with sha256, atomic writing.

A bundle is complete exactly when ``manifest.json`` is present: it is written last, into a
temporary sibling directory that is renamed into place, so an interrupted build never leaves a
directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import TokcompileError
from ..models.weights import file_sha256

MANIFEST = "manifest.json"
FORMAT = "tokcompile-bundle"
FORMAT_VERSION = 1


def hash_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": file_sha256(directory / n), "bytes": (directory / n).stat().st_size} for n in names}


def read_manifest(directory: Path | str, verify: bool = True) -> dict[str, Any]:
    """Read and (by default) verify a bundle; raises TokcompileError naming what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir() or not path.is_file():
        raise TokcompileError(
            f"'{directory}' is not a tokcompile bundle (no {MANIFEST}); build one with 'tokcompile build'"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TokcompileError(f"'{path}' is not valid JSON ({exc}); rebuild the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TokcompileError(f"'{directory}' is not a tokcompile bundle ({MANIFEST} has no format '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TokcompileError(
            f"bundle '{directory}' has format version {manifest.get('format_version')}, this tokcompile "
            f"reads {FORMAT_VERSION}; rebuild it"
        )
    if verify:
        for name, entry in manifest.get("files", {}).items():
            file = directory / name
            if not file.is_file():
                raise TokcompileError(f"bundle '{directory}' is missing '{name}'; rebuild it")
            if file_sha256(file) != entry["sha256"]:
                raise TokcompileError(f"'{file}' fails its sha256 check (modified or corrupt); rebuild the bundle")
    return manifest


def check_output(directory: Path, fingerprint: str, force: bool) -> None:
    """Refuse to replace a different bundle or unrelated files unless ``force``."""
    if force or not directory.exists():
        return
    if not directory.is_dir():
        raise TokcompileError(f"output '{directory}' exists and is not a directory; choose another -o")
    if not any(directory.iterdir()):
        return
    try:
        existing = read_manifest(directory, verify=False)
    except TokcompileError:
        raise TokcompileError(
            f"output '{directory}' holds files that are not a tokcompile bundle; choose another -o or pass --force"
        ) from None
    if existing.get("fingerprint") != fingerprint:
        raise TokcompileError(
            f"output '{directory}' holds a different bundle ({existing.get('model', {}).get('name')}, "
            f"{existing.get('method', {}).get('name')}, {existing.get('precision')}); "
            "choose another -o or pass --force to replace it"
        )


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final``; removed on any error (including KeyboardInterrupt)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tokcompile-tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit(tmp: Path, final: Path, manifest: dict[str, Any], data_files: list[str]) -> None:
    """Hash ``data_files``, write the manifest last, and move ``tmp`` to ``final`` atomically."""
    manifest["files"] = hash_files(tmp, data_files)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    try:
        replace_path(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_path(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` (--force) is removed only once the move worked."""
    old = None
    if final.exists():
        old = final.with_name(f".tokcompile-old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
