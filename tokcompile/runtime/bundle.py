"""The bundle directory: manifest, files with sha256, atomic writing, validated reading.

A bundle is complete exactly when ``manifest.json`` is present: it is written last, into a
temporary sibling directory that is renamed into place (``tokcompile/outputs.py``), so an
interrupted build never leaves a directory that looks complete.

Reading is strict, because a bundle is what a deployment machine runs: the manifest must have
the structure this tokcompile writes (every problem is one line naming the field), every path it
names must stay inside the bundle, every file that runs (stage ONNX files, engines, the plugin
library) must be listed under ``files`` with its sha256, and every listed file must hash to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from .. import outputs
from ..errors import TokcompileError
from ..models.weights import file_sha256

MANIFEST = "manifest.json"
FORMAT = "tokcompile-bundle"
FORMAT_VERSION = 1
# Files tokcompile may add to a finished bundle (not hashed: nothing in them runs).
SIDE_FILES = ("bench.json",)  # runtime.bench.BENCH_FILE
PRECISIONS = ("fp32", "fp16", "bf16")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def hash_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": file_sha256(directory / n), "bytes": (directory / n).stat().st_size} for n in names}


class ManifestError(TokcompileError):
    """A malformed manifest: one line naming the bundle and the field."""


def _bad(directory: Path, what: str) -> ManifestError:
    return ManifestError(f"bundle '{directory}' has a malformed {MANIFEST}: {what}; rebuild the bundle")


def bundle_file(directory: Path, name: Any, field: str = "files") -> Path:
    """``directory / name`` for a file name a manifest gives; raises unless it stays inside the bundle.

    Refused: non-strings, absolute paths, ``..`` components, and symbolic links that resolve
    outside the bundle.
    """
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise _bad(directory, f"{field} names {name!r}, which is not a relative file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[0] in ("", "."):
        raise _bad(directory, f"{field} names '{name}', a path outside the bundle")
    path = directory / pure
    if not path.resolve().is_relative_to(directory.resolve()):
        raise _bad(directory, f"{field} names '{name}', which resolves outside the bundle")
    return path


def _expect(directory: Path, value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))
    if not ok:
        names = "/".join(k.__name__ for k in _tuple(kind))
        raise _bad(directory, f"'{field}' must be a {names}, got {type(value).__name__}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _ints(directory: Path, value: Any, field: str, length: Optional[int] = None, low: int = 1) -> list[int]:
    _expect(directory, value, list, field)
    if length is not None and len(value) != length:
        raise _bad(directory, f"'{field}' must list {length} integers, got {len(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _bad(directory, f"'{field}' must hold integers ≥ {low}, got {v!r}")
    return value


def _strings(directory: Path, value: Any, field: str) -> list[str]:
    _expect(directory, value, list, field)
    if not all(isinstance(v, str) for v in value):
        raise _bad(directory, f"'{field}' must be a list of names")
    return value


def validate_manifest(directory: Path, manifest: Any) -> dict[str, Any]:
    """Check the structure of a parsed manifest; returns it. Raises ManifestError (one line)."""
    directory = Path(directory)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TokcompileError(f"'{directory}' is not a tokcompile bundle ({MANIFEST} has no format '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TokcompileError(
            f"bundle '{directory}' has format version {manifest.get('format_version')!r}, this tokcompile "
            f"reads {FORMAT_VERSION}; rebuild it"
        )
    for key, kind in (("model", dict), ("weights", dict), ("method", dict), ("tokens", dict), ("gmacs", dict)):
        _expect(directory, manifest.get(key), kind, key)
    _expect(directory, manifest.get("files"), dict, "files")
    model = manifest["model"]
    for key in ("name", "timm_name"):
        _expect(directory, model.get(key), str, f"model.{key}")
    _expect(directory, model.get("kwargs", {}), dict, "model.kwargs")
    _ints(directory, model.get("input_shape"), "model.input_shape", 3)
    _ints(directory, model.get("grid"), "model.grid", 2)
    for key, low in (("num_classes", 0), ("num_prefix_tokens", 0), ("depth", 1), ("embed_dim", 1)):
        _ints(directory, [model.get(key)], f"model.{key}", low=low)
    _expect(directory, manifest["method"].get("name"), str, "method.name")
    _expect(directory, manifest["method"].get("params"), dict, "method.params")
    _expect(directory, manifest["weights"].get("source"), str, "weights.source")
    if manifest.get("precision") not in PRECISIONS:
        raise _bad(directory, f"'precision' must be one of {', '.join(PRECISIONS)}, got {manifest.get('precision')!r}")
    _expect(directory, manifest.get("backend"), str, "backend")
    _expect(directory, manifest["tokens"].get("sequence"), list, "tokens.sequence")
    for name, entry in manifest["files"].items():
        bundle_file(directory, name, "files")
        _expect(directory, entry, dict, f"files.{name}")
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            raise _bad(directory, f"'files.{name}.sha256' must be 64 lowercase hex digits")
    stages = _expect(directory, manifest.get("stages"), list, "stages")
    if not stages:
        raise _bad(directory, "'stages' is empty")
    produced: set[str] = set()
    for i, stage in enumerate(stages):
        _validate_stage(directory, manifest, _expect(directory, stage, dict, f"stages[{i}]"), i)
        produced.update(stage["outputs"])
    final = _expect(directory, manifest.get("final_outputs") or {n: n for n in stages[0]["outputs"]}, dict, "final")
    for name, value in final.items():
        if not isinstance(value, str) or value not in produced:
            raise _bad(directory, f"'final_outputs.{name}' names {value!r}, which no stage outputs")
    trt = manifest.get("tensorrt")
    if trt is not None:
        _expect(directory, trt, dict, "tensorrt")
        lib = trt.get("plugin_library")
        if lib is not None:
            _listed(
                directory,
                manifest,
                _expect(directory, lib, dict, "tensorrt.plugin_library").get("file"),
                "tensorrt.plugin_library.file",
            )
    return manifest


def _listed(directory: Path, manifest: dict[str, Any], name: Any, field: str) -> None:
    """A file the bundle runs: inside the bundle and hashed under ``files``."""
    bundle_file(directory, name, field)
    if name not in manifest["files"]:
        raise _bad(directory, f"'{field}' names '{name}', which 'files' does not list (so it is not hashed)")


def _validate_stage(directory: Path, manifest: dict[str, Any], stage: dict[str, Any], i: int) -> None:
    where = f"stages[{i}]"
    for key in ("inputs", "outputs", "token_values"):
        _strings(directory, stage.get(key, [] if key == "token_values" else None), f"{where}.{key}")
    if not stage["inputs"] or not stage["outputs"]:
        raise _bad(directory, f"'{where}' has no inputs or no outputs")
    values_in = _strings(directory, stage.get("values_in", stage["inputs"]), f"{where}.values_in")
    if len(values_in) != len(stage["inputs"]):
        raise _bad(directory, f"'{where}.values_in' must pair with its {len(stage['inputs'])} inputs")
    for key, value in stage.items():  # every file the stage names (ONNX, twin, engines) runs
        if key == "file" or key.endswith("_file"):
            _listed(directory, manifest, value, f"{where}.{key}")
    if "file" not in stage:
        raise _bad(directory, f"'{where}' has no 'file'")
    count = stage.get("count")
    if count is not None and count not in stage["outputs"]:
        raise _bad(directory, f"'{where}.count' names {count!r}, which is not one of its outputs")
    if "buckets" in stage and stage["buckets"] is not None:
        _ints(directory, stage["buckets"], f"{where}.buckets")
    for j, dim in enumerate(_expect(directory, stage.get("extra_dims", []), list, f"{where}.extra_dims")):
        _expect(directory, dim, dict, f"{where}.extra_dims[{j}]")
        if dim.get("count") not in stage["outputs"]:
            raise _bad(directory, f"'{where}.extra_dims[{j}].count' is not one of the stage's outputs")
        _strings(directory, dim.get("values"), f"{where}.extra_dims[{j}].values")
        _ints(directory, [dim.get("max")], f"{where}.extra_dims[{j}].max")


def read_manifest(directory: Path | str, verify: bool = True) -> dict[str, Any]:
    """Read, validate and (by default) verify a bundle; raises TokcompileError naming what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir() or not path.is_file():
        raise TokcompileError(
            f"'{directory}' is not a tokcompile bundle (no {MANIFEST}); build one with 'tokcompile build'"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise TokcompileError(f"'{path}' is not valid JSON ({first}); rebuild the bundle") from None
    validate_manifest(directory, manifest)
    if verify:
        for name, entry in manifest["files"].items():
            file = bundle_file(directory, name)
            if not file.is_file():
                raise TokcompileError(f"bundle '{directory}' is missing '{name}'; rebuild it")
            if file_sha256(file) != entry["sha256"]:
                raise TokcompileError(f"'{file}' fails its sha256 check (modified or corrupt); rebuild the bundle")
    return manifest


def owned_files(directory: Path) -> Optional[set[str]]:
    """The files of the bundle at ``directory`` (manifest, listed files, side files), or None when
    it is not a readable bundle: what ``--force`` may replace."""
    try:
        manifest = read_manifest(directory, verify=False)
    except TokcompileError:
        return None
    return {MANIFEST, *manifest["files"], *SIDE_FILES}


def check_output(directory: Path, fingerprint: str, force: bool) -> None:
    """Refuse to write over anything but an empty folder, the same build, or (with ``force``) a bundle."""
    directory = Path(directory)
    same, existing = False, ""
    if (directory / MANIFEST).is_file():
        try:
            m = read_manifest(directory, verify=False)
        except TokcompileError:
            pass
        else:
            same = m.get("fingerprint") == fingerprint
            existing = f" ({m['model']['name']}, {m['method']['name']}, {m['precision']})"
    outputs.check_directory(directory, owned_files, "tokcompile bundle", force, same, existing=existing)


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final``; removed on any error (including KeyboardInterrupt)."""
    with outputs.staging_dir(final) as tmp:
        yield tmp


def commit(
    tmp: Path, final: Path, manifest: dict[str, Any], data_files: list[str], fingerprint: str, force: bool
) -> None:
    """Hash ``data_files`` (added to ``manifest["files"]``), write the manifest last, and publish
    ``tmp`` at ``final`` atomically. The output is checked again first: something may have appeared
    there during the build.
    """
    manifest["files"] = {**manifest.get("files", {}), **hash_files(tmp, data_files)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    check_output(final, fingerprint, force)
    outputs.publish(tmp, final)
