"""``triton_repo_from_bundle``: a Triton Inference Server model repository that stages on the server.

Layout (``<name>``: the bundle directory's name, or ``name=``)::

    REPO/
      tokcompile-repository.json   marker: written by tokcompile (only such a folder is replaced)
      <name>/
        config.pbtxt               backend "python", dynamic batching, instances, bundle parameter
        1/model.py                 the entry model (deploy/triton_entry.py → deploy/triton_model.py)
        1/bundle/                  a copy of the bundle; its sha256s are checked when Triton loads it
      client.py                    a plain tritonclient example (deploy/triton_client.py)
      README.md                    how to serve and query it

The entry model runs ``tokcompile.load(bundle)``: the in-process staged runner (buckets, split by
count, ONNX Runtime or the TensorRT engines), so clients send images and get logits, with no
staging of their own. One model per stage cannot do that: a Triton ensemble wires outputs to
inputs unchanged and cannot cut or pad token tensors to a bucket between stages.

config.pbtxt follows Triton's model_config.proto (tests parse it with the ``ModelConfig``
message tritonclient ships): with ``max_batch_size`` > 0 the batch dimension is implicit, so
``images`` is declared ``dims: [ 3, H, W ]``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import onnx

from .. import _defaults, outputs
from .._version import __version__
from ..backends import get_backend
from ..errors import TokcompileError
from ..manifest import Manifest
from ..passes.names import LOGITS
from ..runtime.bundle import MANIFEST, read_manifest
from .triton_model import INPUT, OUTPUTS

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
ENTRY_SOURCE = HERE / "triton_entry.py"
CLIENT_SOURCE = HERE / "triton_client.py"
MARKER = "tokcompile-repository.json"
MARKER_FORMAT = "tokcompile-triton-repository"
BUNDLE_DIR = "bundle"  # the bundle copy, inside the model's version folder
VERSION = "1"


@dataclass(frozen=True)
class Batching:
    """The entry model's serving settings (config.pbtxt): dynamic batching and instance count."""

    max_batch: int
    max_queue_delay_us: int
    instances: int
    kind: str = "KIND_CPU"  # instance_group kind: KIND_GPU for TensorRT bundles (one GPU each)


def batching(
    max_batch: Optional[int] = None,
    max_queue_delay_us: Optional[int] = None,
    instances: Optional[int] = None,
    manifest: Optional[Manifest] = None,
    gpu: bool = True,
) -> Batching:
    """Resolve defaults and check ranges; raises TokcompileError naming the flag. With a TensorRT
    bundle's ``manifest``, the batch is capped by (by default) or checked against its engines, and
    the instances are GPU instances when its backend runs on one (``Backend.device``), unless ``gpu``
    is False (no GPU here: they run the ONNX files)."""
    cap = _engine_max_batch(manifest) if manifest is not None else None
    default = min(_defaults.TRITON_MAX_BATCH, cap or _defaults.TRITON_MAX_BATCH)
    on_gpu = manifest is not None and get_backend(manifest.backend).device == "gpu"
    resolved = Batching(
        default if max_batch is None else max_batch,
        _defaults.TRITON_MAX_QUEUE_DELAY_US if max_queue_delay_us is None else max_queue_delay_us,
        _defaults.TRITON_INSTANCES if instances is None else instances,
        "KIND_GPU" if on_gpu and gpu else "KIND_CPU",
    )
    if resolved.max_batch < 1:
        raise TokcompileError(f"--max-batch must be ≥ 1, got {resolved.max_batch}")
    if cap is not None and resolved.max_batch > cap:
        raise TokcompileError(
            f"--max-batch {resolved.max_batch} exceeds the {cap} images the bundle's TensorRT engines accept; "
            f"pass --max-batch {cap} or less"
        )
    if resolved.max_queue_delay_us < 0:
        raise TokcompileError(f"--max-queue-delay-us must be ≥ 0, got {resolved.max_queue_delay_us}")
    if resolved.instances < 1:
        raise TokcompileError(f"--instances must be ≥ 1, got {resolved.instances}")
    return resolved


def model_name(bundle: Path, name: Optional[str]) -> str:
    base = name or bundle.resolve().name
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    if not clean or clean.startswith("."):
        raise TokcompileError(f"--name must start with a letter, digit or '_', got '{base}'")
    return clean


def _engine_max_batch(manifest: Manifest) -> Optional[int]:
    """The largest batch every profile of every built TensorRT engine accepts (None: no engines).
    Only built engines count: the planned profiles (``tensorrt_plan``) that every bundle carries for
    report.md's engine commands do not bound an ONNX Runtime bundle."""
    maxima = [
        shapes[2][0]
        for s in manifest.stages
        if s.engine is not None
        for p in s.engine.profiles
        for shapes in p["shapes"].values()
    ]
    return min(maxima) if maxima else None


def _output_dims(bundle: Path, manifest: Manifest) -> dict[str, list[int]]:
    """Per served output (logits, features): its dims without the batch, from the ONNX files."""
    final = manifest.final_outputs
    dims: dict[str, list[int]] = {}
    graphs: dict[str, onnx.GraphProto] = {}  # by stage file: logits and features come from one stage
    for name in OUTPUTS:
        value = final.get(name)
        for stage in manifest.stages:
            if value in stage.outputs:
                if stage.file not in graphs:
                    try:
                        graphs[stage.file] = onnx.load(str(bundle / stage.file), load_external_data=False).graph
                    except Exception as exc:  # a corrupt protobuf raises DecodeError, among others
                        raise TokcompileError(
                            f"cannot read '{bundle / stage.file}' ({exc}); rebuild the bundle"
                        ) from None
                (tensor,) = [t for t in graphs[stage.file].output if t.name == value]
                shape = tensor.type.tensor_type.shape.dim[1:]
                dims[name] = [d.dim_value if d.HasField("dim_value") else -1 for d in shape]
    if LOGITS not in dims:
        raise TokcompileError(f"bundle '{bundle}' has no '{LOGITS}' output; rebuild it")
    return dims


def entry_config(
    name: str, manifest: Manifest, dims: dict[str, list[int]], settings: Batching, bundle_parameter: str
) -> str:
    """config.pbtxt of the entry model serving a bundle (``bundle_parameter``: where model.py finds it;
    ``dims``: per output, its dims without the batch)."""
    image_dims = ", ".join(map(str, manifest.model.input_shape))
    outputs = ",\n".join(
        f'  {{\n    name: "{n}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, d))} ]\n  }}'
        for n, d in dims.items()
    )
    return f"""name: "{name}"
backend: "python"
max_batch_size: {settings.max_batch}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    dims: [ {image_dims} ]
  }}
]
output [
{outputs}
]
dynamic_batching {{
  max_queue_delay_microseconds: {settings.max_queue_delay_us}
}}
instance_group [
  {{
    count: {settings.instances}
    kind: {settings.kind}
  }}
]
parameters {{
  key: "bundle"
  value: {{ string_value: {json.dumps(bundle_parameter)} }}
}}
"""


def write_entry_model(
    model_dir: Path, name: str, bundle: Path, manifest: Manifest, settings: Batching, copy_bundle: bool
) -> dict[str, list[int]]:
    """``model_dir``/config.pbtxt and 1/model.py; the bundle is copied into 1/bundle or, with
    ``copy_bundle`` False (``tokcompile serve``), referenced by its absolute path. Returns the
    served outputs' dims (without the batch)."""
    version = model_dir / VERSION
    version.mkdir(parents=True)
    parameter = BUNDLE_DIR if copy_bundle else str(bundle.resolve())
    dims = _output_dims(bundle, manifest)
    (model_dir / "config.pbtxt").write_text(entry_config(name, manifest, dims, settings, parameter))
    shutil.copyfile(ENTRY_SOURCE, version / "model.py")
    if copy_bundle:
        _copy_tree(bundle, version / BUNDLE_DIR)
    return dims


def _copy_tree(source: Path, target: Path) -> None:
    """Copy files only (no permission bits): folders and files get the user's umask, like any new file."""
    target.mkdir()
    for path in sorted(source.iterdir()):
        if path.is_dir():
            _copy_tree(path, target / path.name)
        elif path.is_file():
            shutil.copyfile(path, target / path.name)


def _readme(name: str, manifest: Manifest, dims: dict[str, list[int]], settings: Batching) -> str:
    model = manifest.model
    shape = ", ".join(map(str, model.input_shape))
    outputs = "\n".join(f"| output `{n}` | FP32 | [b, {', '.join(map(str, d))}] |" for n, d in dims.items())
    return f"""# Triton repository: {model.name} · {manifest.method.name} · {manifest.precision}

Written by `tokcompile export-triton` ({__version__}) from a `{manifest.backend}` bundle. One model,
`{name}`: Triton's Python backend runs `{name}/1/model.py`, which loads the bundle copy in
`{name}/1/{BUNDLE_DIR}/` with `tokcompile.load` (every file's sha256 is checked) and runs the same
staged runner as in-process: token buckets and split-by-count happen on the server. Clients send
images and get logits; they stage nothing.

| tensor | type | shape |
|---|---|---|
| input `{INPUT}` | FP32 | [b, {shape}], b ≤ {settings.max_batch} (preprocessed as timm's eval transform for `{model.timm_name}`) |
{outputs}

Dynamic batching (`max_queue_delay_microseconds: {settings.max_queue_delay_us}`) merges requests into
one run; each request gets its own rows back, and a request with bad input (NaN/Inf pixels, an empty
batch) gets its own error while its batch-mates are answered. Instances: {settings.instances}
(`instance_group`, one Python process each).

## Serve

The server's Python must import tokcompile (`pip install tokcompile`, this version or later).

With the `tritonserver` that PyPI's `nvidia-pytriton` ships (`pip install "tokcompile[serve]"`):

```
tokcompile serve .            # from this folder; --host/--http-port/--grpc-port/--metrics-port
```

It runs `tritonserver --model-repository=$PWD --backend-directory=...` and handles two traps of that
package: its backend folder has no Python-backend stub (a backend folder with the stub for your
Python is assembled), and the stub loads the system's `libpython3.X` before yours (the
`'_thread.RLock' object has no attribute '_recursion_count'` error): `LD_LIBRARY_PATH` starts with
your interpreter's `sysconfig.get_config_var("LIBDIR")`. The stub also ignores `PYTHONPATH`;
`model.py` reads it itself.

In a Triton container (`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`, the Python backend included):

```
pip install tokcompile
tritonserver --model-repository=$PWD
```

## Query

```
pip install "tritonclient[http]"
python client.py --url localhost:8000 --random 2       # or: python client.py images.npy
```
"""


def read_repository(repo: Path | str) -> dict[str, Any]:
    """The marker of a repository tokcompile wrote; raises TokcompileError for any other folder."""
    repo = Path(repo)
    marker = repo / MARKER
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("format") != MARKER_FORMAT:
        raise TokcompileError(
            f"'{repo}' is not a Triton repository written by 'tokcompile export-triton' (no valid {MARKER})"
        )
    return record


def owned_files(repo: Path) -> Optional[set[str]]:
    """The files of the tokcompile repository at ``repo`` (its marker lists them), or None for any
    other folder: what ``--force`` may replace."""
    try:
        record = read_repository(repo)
    except TokcompileError:
        return None
    files = record.get("files")
    return {MARKER, *files} if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def triton_repo_from_bundle(
    bundle: Path | str,
    repo: Path | str,
    force: bool = False,
    name: Optional[str] = None,
    max_batch: Optional[int] = None,
    max_queue_delay_us: Optional[int] = None,
    instances: Optional[int] = None,
) -> dict[str, Any]:
    """Write the repository at ``repo`` atomically (a temporary sibling renamed into place).

    Returns the marker's content (``model``: the model name). Raises TokcompileError for a
    missing/invalid bundle, bad settings, an unwritable parent, or an existing ``repo`` that is
    not a tokcompile repository (or is one, without ``force``).
    """
    bundle, repo = Path(bundle), Path(repo)
    manifest = read_manifest(bundle)
    if repo.resolve() == bundle.resolve() or repo.resolve() in bundle.resolve().parents:
        raise TokcompileError(f"REPO '{repo}' must not be the bundle or a folder holding it; choose another REPO")
    settings = batching(max_batch, max_queue_delay_us, instances, manifest)
    model = model_name(bundle, name)
    kind = "Triton repository written by 'tokcompile export-triton'"
    with outputs.output_lock(repo, "REPO"):
        outputs.check_directory(repo, owned_files, kind, force, flag="REPO")
        with outputs.staging_dir(repo, "REPO") as tmp:
            dims = write_entry_model(tmp / model, model, bundle, manifest, settings, copy_bundle=True)
            shutil.copyfile(CLIENT_SOURCE, tmp / "client.py")
            (tmp / "README.md").write_text(_readme(model, manifest, dims, settings))
            record = {
                "format": MARKER_FORMAT,
                "format_version": 1,
                "tokcompile": __version__,
                "model": model,
                "bundle": {
                    "fingerprint": manifest.fingerprint,
                    "model": manifest.model.name,
                    "method": manifest.method.name,
                    "precision": manifest.precision,
                    "manifest": f"{model}/{VERSION}/{BUNDLE_DIR}/{MANIFEST}",
                },
                "max_batch": settings.max_batch,
                "max_queue_delay_us": settings.max_queue_delay_us,
                "instances": settings.instances,
                # every file written, so that --force later replaces exactly what tokcompile wrote
                "files": sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()),
            }
            (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
            outputs.publish(tmp, repo)
    logger.info("export-triton: wrote %s (model '%s', server-side staging)", repo, model)
    return record
