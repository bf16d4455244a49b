"""The bundle manifest as types: ``Manifest`` and its parts, one loader that validates, one writer.

``manifest.json`` is the contract between the build and everything that reads a bundle (the
runner, compare, bench, serve, Triton export, the engine commands in report.md). Readers get a
``Manifest``, never a dict, so a field that a build does not write cannot be read by guessing.

* ``Manifest.from_json`` validates while it converts: every field is checked against its type
  (one line naming the field on any mismatch), format version 1 bundles are upgraded in memory,
  and unknown fields are refused rather than silently carried.
* ``Manifest.to_json`` is the only place that writes the JSON layout (format version 2).

Version 2 differs from version 1 in three places: a stage's engine facts are one ``engine``
object (v1: flat ``tensorrt_file``, ``tensorrt_profiles``, ... keys), token warnings are a list
(v1: one ``warning`` string) and ``files`` is required (v1 readers accepted its absence).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import TokcompileError
from .precision import PRECISIONS

FORMAT = "tokcompile-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FALLBACK = "fallback"  # the catch-all TensorRT profile's "bucket"

Profile = dict[str, Any]  # {"bucket": int | "fallback", "shapes": {input: [min, opt, max]}}


class ManifestError(TokcompileError):
    """A malformed manifest: one line naming the bundle and the field."""


# ---------------------------------------------------------------------------------------- parts


@dataclass
class FileEntry:
    sha256: str
    bytes: int


@dataclass
class ModelRecord:
    name: str  # as the user gave it (alias or timm name)
    timm_name: str
    kwargs: dict[str, Any]  # timm.create_model arguments (img_size, ...)
    input_shape: list[int]  # [3, H, W]
    num_classes: int
    depth: int
    embed_dim: int
    num_heads: int
    num_prefix_tokens: int
    patch_size: list[int]
    grid: list[int]  # patch rows, columns

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]


@dataclass
class WeightsRecord:
    source: str  # pretrained | random | file
    digest: str  # models.weights.state_digest: proves a rebuilt model has the same weights
    seed: Optional[int] = None
    path: Optional[str] = None
    sha256: Optional[str] = None
    tag: Optional[str] = None
    method_tensors: Optional[int] = None
    resampled: Optional[dict[str, Any]] = None  # position-embedding resampling (from/to grid, interpolation)


@dataclass
class MethodRecord:
    name: str
    params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class BlockTokens:
    block: int
    attention: int
    mlp: int


@dataclass
class Boundary:
    """Per-image token counts after one stage, seen on the calibration images, and its buckets."""

    stage: int
    output: str
    mean: float
    min: int
    max: int
    buckets: list[int]
    expected_ms_per_block: Optional[float] = None


@dataclass
class TokensRecord:
    sequence: list[float]  # tokens entering the model, then after each reduction (staged: means)
    blocks: list[BlockTokens] = field(default_factory=list)  # static methods: per block
    boundaries: list[Boundary] = field(default_factory=list)  # staged methods: per stage boundary
    calibration: Optional[dict[str, Any]] = None  # staged: source, images, selection, profile, ...
    warnings: list[str] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return bool(self.boundaries)


@dataclass
class Gmacs:
    reduced: float
    dense: float
    ideal_speedup: float


@dataclass
class Lowering:
    plugins: str  # the --plugins mode the ONNX files were exported with
    plugin_nodes: dict[str, int]
    native_nodes: dict[str, int]
    requested: Optional[str] = None  # when the backend changed the requested mode


@dataclass
class ExtraDim:
    """A data-dependent dimension besides the bucketed tokens (AdaViT's kept heads, MLP rows): a
    boundary cuts ``values`` to the batch's largest ``count``; ``max`` is the dim's full size."""

    name: str
    count: str
    values: list[str]
    max: int


@dataclass
class EngineEntry:
    """One stage's TensorRT engine: its file and the profiles it was built with."""

    file: str
    profiles: list[Profile]
    plugin_layers: int = 0
    layers: Optional[int] = None
    tf32: Optional[bool] = None
    build_seconds: Optional[float] = None


@dataclass
class StageEntry:
    """One stage file and how the stage loop feeds it (runtime/staged.py)."""

    index: int
    file: str  # the ONNX file (in the build's precision)
    inputs: list[str]  # ONNX input names
    values_in: list[str]  # the graph values feeding them (earlier stages' outputs; "x" = images)
    outputs: list[str]
    onnxruntime_file: str  # what ONNX Runtime runs: ``file`` or its fp32 twin
    onnxruntime_precision: str
    token_inputs: list[str] = field(default_factory=list)  # inputs with a dynamic token dimension
    token_values: list[str] = field(default_factory=list)  # values whose dim 1 is the token dimension
    count: Optional[str] = None  # output holding the per-image token count this stage ends with
    buckets: list[int] = field(default_factory=list)  # for the stage after this one
    extra_dims: list[ExtraDim] = field(default_factory=list)
    input_types: dict[str, str] = field(default_factory=dict)
    opset: Optional[int] = None
    custom_nodes: list[str] = field(default_factory=list)
    plugin_nodes: dict[str, int] = field(default_factory=dict)
    native_nodes: dict[str, int] = field(default_factory=dict)
    onnxruntime_note: Optional[str] = None  # why ONNX Runtime runs a twin
    tensorrt_plan: list[Profile] = field(default_factory=list)  # the profiles a TensorRT build uses
    engine: Optional[EngineEntry] = None


@dataclass
class EnginesRecord:
    """The TensorRT build: flavour, version, targets, batch range, plugin library (the manifest's
    ``tensorrt`` block)."""

    flavour: str  # tensorrt | tensorrt-rtx
    version: str
    max_batch: int
    opt_batch: int
    target_sm: Optional[list[int]] = None  # tensorrt-rtx: ahead-of-time targets
    gpu: Optional[str] = None  # tensorrt: the GPU that built the engines
    compute_capability: Optional[str] = None
    plugin_library: Optional[dict[str, str]] = None  # {"file", "sha256"}


@dataclass
class Manifest:
    fingerprint: str
    created: str
    model: ModelRecord
    weights: WeightsRecord
    method: MethodRecord
    precision: str
    backend: str
    lowering: Lowering
    tokens: TokensRecord
    gmacs: Gmacs
    stages: list[StageEntry]
    final_outputs: dict[str, str]  # model output name → the stage output value that holds it
    versions: dict[str, str]
    files: dict[str, FileEntry]
    build_seconds: Optional[float] = None
    tf32: Optional[bool] = None
    tensorrt: Optional[EnginesRecord] = None
    format_version: int = FORMAT_VERSION

    @property
    def staged(self) -> bool:
        return len(self.stages) > 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape)

    def run_files(self) -> list[tuple[str, Any]]:
        """(field, file) of every file the bundle runs: stage files, twins, engines, plugin library."""
        named: list[tuple[str, Any]] = []
        for s in self.stages:
            where = f"stages[{s.index}]"
            named += [(f"{where}.file", s.file), (f"{where}.onnxruntime_file", s.onnxruntime_file)]
            if s.engine is not None:
                named.append((f"{where}.engine.file", s.engine.file))
        if self.tensorrt is not None and self.tensorrt.plugin_library:
            named.append(("tensorrt.plugin_library.file", self.tensorrt.plugin_library.get("file")))
        return named

    # ------------------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """The ``manifest.json`` text (format version 2): the one writer of the layout."""
        data = _plain(self)
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **{k: v for k, v in data.items() if k != "format_version"},
        }
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Validate and convert a parsed ``manifest.json``; ``where`` names the bundle in errors."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TokcompileError(f"'{where}' is not a tokcompile bundle (manifest.json has no format '{FORMAT}')")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise TokcompileError(
                f"bundle '{where}' has format version {version!r}; this tokcompile reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild it"
            )
        body = {k: v for k, v in data.items() if k != "format"}
        if version == 1:
            body = _upgrade_v1(body, where)
        manifest = _convert(cls, body, "", where)
        _check(manifest, where)
        return manifest


# ------------------------------------------------------------------------------- conversion


def _bad(where: str, what: str) -> ManifestError:
    return ManifestError(f"bundle '{where}' has a malformed manifest.json: {what}; rebuild the bundle")


def _plain(value: Any) -> Any:
    """Dataclasses → dicts without None optionals or empty defaults that v1 never wrote."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None:
                continue
            out[f.name] = _plain(item)
        return out
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _convert(kind: Any, value: Any, field_name: str, where: str) -> Any:
    """``value`` as ``kind`` (a dataclass, a typing form or a plain type); raises naming the field."""
    origin = typing.get_origin(kind)
    label = field_name or "manifest"
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, field_name, where)
            except ManifestError as exc:
                errors.append(exc)
        raise errors[0]
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _bad(where, f"'{label}' must be an object, got {type(value).__name__}")
        hints = _hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise _bad(where, f"'{label}' has unknown field(s) {', '.join(unknown)}")
        kwargs = {}
        for f in dataclasses.fields(kind):
            sub = f"{field_name}.{f.name}" if field_name else f.name
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise _bad(where, f"'{sub}' is missing")
                continue
            kwargs[f.name] = _convert(hints[f.name], value[f.name], sub, where)
        return kind(**kwargs)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise _bad(where, f"'{label}' must be a list, got {type(value).__name__}")
        return [_convert(item, v, f"{label}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(kind)
        if not isinstance(value, dict):
            raise _bad(where, f"'{label}' must be an object, got {type(value).__name__}")
        return {_convert(key_type, k, label, where): _convert(item, v, f"{label}.{k}", where) for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(where, f"'{label}' must be a finite number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, f"'{label}' must be an integer, got {value!r}")
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise _bad(where, f"'{label}' must be a {kind.__name__}, got {type(value).__name__}")
        return value
    raise TypeError(f"manifest field type {kind!r} is not supported")  # a bug in this module


def _upgrade_v1(body: dict[str, Any], where: str) -> dict[str, Any]:
    """Format version 1 → 2 (in memory): engine facts per stage, warnings as a list, files required."""
    body = {**body, "format_version": 2}
    if "files" not in body:
        raise _bad(where, "'files' is missing (version 1 bundles without it are not trusted)")
    tokens = body.get("tokens")
    if isinstance(tokens, dict) and "warning" in tokens:
        tokens = {k: v for k, v in tokens.items() if k != "warning"}
        tokens["warnings"] = [body["tokens"]["warning"]] if body["tokens"]["warning"] else []
        body["tokens"] = tokens
    stages = body.get("stages")
    if isinstance(stages, list):
        upgraded = []
        for stage in stages:
            if not isinstance(stage, dict):
                upgraded.append(stage)
                continue
            stage = {k: v for k, v in stage.items() if k not in ("name", "input")}
            flat = {k: stage.pop(k) for k in list(stage) if k.startswith("tensorrt_") and k != "tensorrt_plan"}
            if "tensorrt_file" in flat:
                stage["engine"] = {
                    "file": flat["tensorrt_file"],
                    "profiles": flat.get("tensorrt_profiles", []),
                    "plugin_layers": flat.get("tensorrt_plugin_layers", 0),
                    **({"layers": flat["tensorrt_layers"]} if "tensorrt_layers" in flat else {}),
                    **({"tf32": flat["tensorrt_tf32"]} if "tensorrt_tf32" in flat else {}),
                    **({"build_seconds": flat["tensorrt_build_seconds"]} if "tensorrt_build_seconds" in flat else {}),
                }
            if stage.get("buckets") is None:
                stage.pop("buckets", None)
            upgraded.append(stage)
        body["stages"] = upgraded
    if isinstance(body.get("tensorrt"), dict):
        block = dict(body["tensorrt"])
        block.setdefault("flavour", body.get("backend", "tensorrt"))
        body["tensorrt"] = block
    return body


def _check(m: Manifest, where: str) -> None:
    """What types cannot say: paths inside the bundle, hashed run files, consistent names."""
    if m.precision not in PRECISIONS:
        raise _bad(where, f"'precision' must be one of {', '.join(PRECISIONS)}, got {m.precision!r}")
    if len(m.model.input_shape) != 3 or any(d < 1 for d in m.model.input_shape):
        raise _bad(where, f"'model.input_shape' must be [3, H, W], got {m.model.input_shape}")
    if len(m.model.grid) != 2 or min(m.model.grid) < 1 or m.model.depth < 1 or m.model.num_classes < 0:
        raise _bad(where, "'model' has an impossible grid, depth or class count")
    for name, entry in m.files.items():
        check_name(where, name, "files")
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
            raise _bad(where, f"'files.{name}.sha256' must be 64 lowercase hex digits")
    if not m.stages:
        raise _bad(where, "'stages' is empty")
    produced: set[str] = set()
    for i, s in enumerate(m.stages):
        at = f"stages[{i}]"
        if not s.inputs or not s.outputs:
            raise _bad(where, f"'{at}' has no inputs or no outputs")
        if len(s.values_in) != len(s.inputs):
            raise _bad(where, f"'{at}.values_in' must pair with its {len(s.inputs)} inputs")
        if s.count is not None and s.count not in s.outputs:
            raise _bad(where, f"'{at}.count' names {s.count!r}, which is not one of its outputs")
        if any(b < 1 for b in s.buckets):
            raise _bad(where, f"'{at}.buckets' must hold positive token counts, got {s.buckets}")
        for j, dim in enumerate(s.extra_dims):
            if dim.count not in s.outputs:
                raise _bad(where, f"'{at}.extra_dims[{j}].count' is not one of the stage's outputs")
        produced.update(s.outputs)
    for field_name, name in m.run_files():
        check_name(where, name, field_name)
        if name not in m.files:
            raise _bad(where, f"'{field_name}' names '{name}', which 'files' does not list (so it is not hashed)")
    for name, value in m.final_outputs.items():
        if value not in produced:
            raise _bad(where, f"'final_outputs.{name}' names {value!r}, which no stage outputs")


def check_name(where: str, name: Any, field_name: str) -> None:
    """A file name a manifest gives must be a relative path inside the bundle."""
    from pathlib import PurePosixPath

    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise _bad(where, f"{field_name} names {name!r}, which is not a relative file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[0] in ("", "."):
        raise _bad(where, f"{field_name} names '{name}', a path outside the bundle")


def bundle_path(directory: Path, name: str, field_name: str = "files") -> Path:
    """``directory / name``, refusing names and symbolic links that lead outside the bundle."""
    check_name(str(directory), name, field_name)
    path = Path(directory) / name
    if not path.resolve().is_relative_to(Path(directory).resolve()):
        raise _bad(str(directory), f"{field_name} names '{name}', which resolves outside the bundle")
    return path
