"""The bundle directory: reading (validated, hashed) and writing (atomic) a ``Manifest``.

A bundle is complete exactly when ``manifest.json`` is present: it is written last, into a
temporary sibling directory that is renamed into place (``tokcompile/outputs.py``), so an
interrupted build never leaves a directory that looks complete.

Reading is strict, because a bundle is what a deployment machine runs: the manifest must have
the structure this tokcompile writes (``runtime/manifest.py``; every problem is one line naming
the field), every path it names must stay inside the bundle, every file that runs (stage ONNX
files, engines, the plugin library) must be listed under ``files`` with its sha256, and every
listed file must hash to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .. import outputs
from ..errors import TokcompileError
from ..manifest import FileEntry, Manifest, bundle_path
from ..models.weights import file_sha256

MANIFEST = "manifest.json"
BENCH_FILE = "bench.json"  # the figures ``tokcompile bench`` measured (runtime/bench.py ``record``)
# Files tokcompile may add to a finished bundle (not hashed: nothing in them runs).
SIDE_FILES = (BENCH_FILE,)


def hash_files(directory: Path, names: list[str]) -> dict[str, FileEntry]:
    return {n: FileEntry(file_sha256(directory / n), (directory / n).stat().st_size) for n in names}


def read_manifest(directory: Path | str, verify: bool = True) -> Manifest:
    """Read, validate and (by default) verify a bundle; raises TokcompileError naming what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir() or not path.is_file():
        raise TokcompileError(
            f"'{directory}' is not a tokcompile bundle (no {MANIFEST}); build one with 'tokcompile build'"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise TokcompileError(f"'{path}' is not valid JSON ({first}); rebuild the bundle") from None
    manifest = Manifest.from_json(data, str(directory))
    for name in manifest.files:  # a symbolic link may lead outside even when the name does not
        bundle_path(directory, name)
    if verify:
        for name, entry in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise TokcompileError(f"bundle '{directory}' is missing '{name}'; rebuild it")
            if file_sha256(file) != entry.sha256:
                raise TokcompileError(f"'{file}' fails its sha256 check (modified or corrupt); rebuild the bundle")
    return manifest


def _unverified(directory: Path) -> Optional[Manifest]:
    """The manifest of the bundle at ``directory`` (files not hashed), or None when it is not a
    readable bundle."""
    try:
        return read_manifest(directory, verify=False)
    except TokcompileError:
        return None


def _owned(manifest: Optional[Manifest]) -> Optional[set[str]]:
    return {MANIFEST, *manifest.files, *SIDE_FILES} if manifest is not None else None


def owned_files(directory: Path) -> Optional[set[str]]:
    """The files of the bundle at ``directory`` (manifest, listed files, side files), or None when
    it is not a readable bundle: what ``--force`` may replace."""
    return _owned(_unverified(directory))


def check_output(directory: Path, fingerprint: str, force: bool) -> None:
    """Refuse to write over anything but an empty folder, the same build, or (with ``force``) a bundle."""
    directory = Path(directory)
    m = _unverified(directory)
    same = m is not None and m.fingerprint == fingerprint
    existing = f" ({m.model.name}, {m.method.name}, {m.precision})" if m is not None else ""
    owned = _owned(m)
    outputs.check_directory(directory, lambda _: owned, "tokcompile bundle", force, same, existing=existing)


def commit(tmp: Path, final: Path, manifest: Manifest, data_files: list[str], force: bool) -> None:
    """Hash ``data_files`` (added to ``manifest.files``), write the manifest last, and publish
    ``tmp`` at ``final`` atomically. The output is checked again first: something may have appeared
    there during the build.
    """
    manifest.files.update(hash_files(tmp, data_files))
    text = manifest.to_json()
    Manifest.from_json(json.loads(text), str(final))  # never publish what reading refuses
    (tmp / MANIFEST).write_text(text)
    check_output(final, manifest.fingerprint, force)
    outputs.publish(tmp, final)
