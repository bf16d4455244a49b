"""``triton_repo_from_bundle``: a Triton Inference Server model repository from a bundle.

Layout (``<name>``: the bundle directory's name, or ``name=``)::

    REPO/
      <name>/ or <name>_stage<k>/     one model per stage file (one model for a one-stage bundle)
        config.pbtxt                  platform, max_batch_size, input/output names, types, dims
        1/model.plan | 1/model.onnx   TensorRT engine (backend tensorrt) or the ONNX file
      pipeline.json                   stage order, I/O wiring, count outputs, buckets, final outputs
      client.py                       the stage loop (tokcompile/export/triton_client.py)
      README.md                       how to serve and query it, plugin preload
      libtokcompile_plugins.so        when the bundle carries a plugin library

Staged bundles are served as separate models and staged by the client: between stages the
token tensors are cut or padded to a bucket, which a Triton ensemble cannot do (it only wires
outputs to inputs). config.pbtxt follows Triton's model_config.proto: with ``max_batch_size``
> 0 the batch dimension is implicit (dims omit it), dynamic dims are -1, a tensor that is only
``[batch]`` is declared ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }`` (Triton rejects empty
dims), and a TensorRT model lists every optimization profile in ``instance_group`` (Triton
otherwise uses profile 0 only; it picks a listed profile by the request's shapes).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import onnx

from .. import _defaults
from ..backends import get_backend
from ..errors import TokcompileError
from ..outputs import publish
from ..runtime.bundle import read_manifest
from ..runtime.commands import plugin_library, stage_profiles, uses_plugins

logger = logging.getLogger(__name__)

CLIENT_SOURCE = Path(__file__).with_name("triton_client.py")

# ONNX element type -> Triton data type (model_config.proto DataType).
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # TYPE_*
    shape: list[int]  # full ONNX shape, -1 for a symbolic dimension
    batch_param: Optional[str]  # dim_param of dim 0, if symbolic


def _tensors(values: Any, where: str) -> list[Tensor]:
    out = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in TRITON_TYPES:
            raise TokcompileError(
                f"{where}: tensor '{v.name}' has type {onnx.TensorProto.DataType.Name(t.elem_type)}, "
                "which this exporter does not map to a Triton type"
            )
        dims = list(t.shape.dim)
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        batch = dims[0].dim_param if dims and not dims[0].HasField("dim_value") and dims[0].dim_param else None
        out.append(Tensor(v.name, TRITON_TYPES[t.elem_type], shape, batch))
    return out


def _io(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    model = onnx.load(str(path), load_external_data=False)
    return _tensors(model.graph.input, path.name), _tensors(model.graph.output, path.name)


def _batched(tensors: list[Tensor]) -> bool:
    """Dim 0 is one shared symbolic batch dimension on every tensor."""
    params = {t.batch_param for t in tensors}
    return len(params) == 1 and None not in params and all(len(t.shape) >= 1 for t in tensors)


def _tensor_block(t: Tensor, batched: bool) -> tuple[str, bool]:
    """One ``{ ... }`` entry of input/output; returns (text, reshaped to [batch])."""
    dims = t.shape[1:] if batched else t.shape
    reshaped = batched and not dims
    lines = [
        f'    name: "{t.name}"',
        f"    data_type: {t.data_type}",
        f"    dims: [ {', '.join(map(str, dims or [1]))} ]",
    ]
    if reshaped:
        lines.append("    reshape: { shape: [ ] }")
    return "  {\n" + "\n".join(lines) + "\n  }", reshaped


def config_pbtxt(
    name: str, platform: str, inputs: list[Tensor], outputs: list[Tensor], max_batch: int, profiles: int
) -> tuple[str, list[str]]:
    """The config.pbtxt text of one model, and the names declared [batch, 1] for a [batch] tensor."""
    batched = _batched(inputs + outputs)
    blocks_in = [_tensor_block(t, batched) for t in inputs]
    blocks_out = [_tensor_block(t, batched) for t in outputs]
    reshaped = [t.name for t, (_, r) in zip(inputs + outputs, blocks_in + blocks_out) if r]
    text = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch if batched else 0}",
        "input [",
        ",\n".join(b for b, _ in blocks_in),
        "]",
        "output [",
        ",\n".join(b for b, _ in blocks_out),
        "]",
    ]
    if profiles:
        listed = ", ".join(f'"{i}"' for i in range(profiles))
        text += ["instance_group [", "  {", "    kind: KIND_GPU", f"    profile: [ {listed} ]", "  }", "]"]
    return "\n".join(text) + "\n", reshaped


def _max_batch(stage: dict[str, Any], requested: Optional[int]) -> int:
    """Explicit value, else the largest batch every TensorRT profile accepts, else the default."""
    if requested is not None:
        if requested < 1:
            raise TokcompileError(f"--max-batch-size must be ≥ 1, got {requested}")
        return requested
    maxima = [shapes[2][0] for p in stage_profiles(stage) for shapes in p.values() if shapes[2]]
    return min(maxima) if maxima else _defaults.TRITON_MAX_BATCH


def model_name(bundle: Path, name: Optional[str]) -> str:
    base = name or bundle.resolve().name
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    if not clean or clean.startswith("."):
        raise TokcompileError(f"--name must start with a letter, digit or '_', got '{base}'")
    return clean


def _readme(manifest: dict[str, Any], models: list[dict[str, Any]], plugin: Optional[str], tensorrt: bool) -> str:
    staged = len(models) > 1
    lines = [
        f"# Triton repository: {manifest['model']['name']} · {manifest['method']['name']} · {manifest['precision']}",
        "",
        f"Written by `tokcompile export-triton` from a `{manifest['backend']}` bundle: "
        f"{len(models)} model(s), platform `{'tensorrt_plan' if tensorrt else 'onnxruntime_onnx'}`.",
        "",
        "## Serve",
        "",
        "```",
    ]
    if plugin:
        lines.append(f"LD_PRELOAD=$PWD/{plugin} tritonserver --model-repository=$PWD")
        lines += [
            "# or, for TensorRT models only:",
            f"tritonserver --model-repository=$PWD --backend-config=tensorrt,plugins=$PWD/{plugin}",
        ]
    else:
        lines.append("tritonserver --model-repository=$PWD")
    lines += ["```", ""]
    if plugin:
        lines += [
            f"`{plugin}` holds the TensorRT plugins (namespace `{_defaults.PLUGIN_NAMESPACE}`) that the engines use; "
            "it must be built against the TensorRT version of the Triton container.",
            "",
        ]
    lines += ["## Query", ""]
    if staged:
        lines += [
            "The bundle is staged: the token count after some stages depends on the image. Each stage is its own "
            "model; a client runs them in order and, after a stage that outputs a count, cuts or pads every token "
            "tensor to the smallest bucket ≥ the batch's largest count before the next stage. A Triton ensemble "
            "cannot cut or pad between steps, so the loop is client-side: `client.py` implements it "
            "(`run_pipeline`, with the wiring in `pipeline.json`).",
            "",
        ]
    lines += [
        "```",
        "pip install 'tritonclient[http]'",
        "python client.py images.npy --url localhost:8000   # images: float32 [B, 3, H, W]",
        "```",
        "",
        "| stage | model | inputs | outputs | count output | buckets |",
        "|---|---|---|---|---|---|",
    ]
    for m in models:
        buckets = ", ".join(map(str, m.get("buckets") or [])) or "-"
        lines.append(
            f"| {m['index']} | `{m['model']}` | {', '.join(m['inputs'])} | {', '.join(m['outputs'])} | "
            f"{m.get('count') or '-'} | {buckets} |"
        )
    return "\n".join(lines) + "\n"


def triton_repo_from_bundle(
    bundle: Path | str,
    repo: Path | str,
    force: bool = False,
    name: Optional[str] = None,
    max_batch_size: Optional[int] = None,
) -> dict[str, Any]:
    """Write the repository at ``repo`` (atomically: a temporary sibling renamed into place).

    Returns ``pipeline.json``'s content. Raises TokcompileError for a missing/invalid bundle or
    an existing ``repo`` without ``force``.
    """
    bundle, repo = Path(bundle), Path(repo)
    manifest = read_manifest(bundle)
    if repo.resolve() == bundle.resolve() or repo.resolve() in bundle.resolve().parents:
        raise TokcompileError(f"REPO '{repo}' must not be the bundle or a folder holding it; choose another REPO")
    if repo.exists() and not force:
        raise TokcompileError(f"'{repo}' exists; choose another REPO or pass --force to replace it")
    base = model_name(bundle, name)
    stages = manifest["stages"]
    backend = get_backend(manifest["backend"])
    tensorrt = backend.triton_platform == "tensorrt_plan"
    if not tensorrt and manifest.get("tensorrt"):
        logger.warning(
            "export-triton: Triton's TensorRT backend cannot run %s engines; the repository serves the bundle's "
            "ONNX files with ONNX Runtime",
            backend.label,
        )
    plugin = plugin_library(manifest) if tensorrt and uses_plugins(manifest) else None
    if plugin and not (bundle / plugin).is_file():
        raise TokcompileError(f"bundle '{bundle}' has plugin nodes but no '{plugin}'; rebuild it")

    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tokcompile-tmp-{repo.name}-", dir=repo.parent))
    try:
        models = []
        for stage in stages:
            model = base if len(stages) == 1 else f"{base}_stage{stage['index']}"
            inputs, outputs = _io(bundle / stage["file"])
            if tensorrt:
                engine = stage.get("tensorrt_file")
                if not engine or not (bundle / engine).is_file():
                    raise TokcompileError(f"bundle '{bundle}' stage {stage['index']} has no TensorRT engine file")
                source, target, platform = bundle / engine, "model.plan", "tensorrt_plan"
                profiles = max(1, len(stage_profiles(stage)))
            else:
                source, target, platform, profiles = bundle / stage["file"], "model.onnx", "onnxruntime_onnx", 0
            text, reshaped = config_pbtxt(model, platform, inputs, outputs, _max_batch(stage, max_batch_size), profiles)
            (tmp / model / "1").mkdir(parents=True)
            shutil.copyfile(source, tmp / model / "1" / target)
            (tmp / model / "config.pbtxt").write_text(text)
            models.append(
                {
                    "index": stage["index"],
                    "model": model,
                    "inputs": [t.name for t in inputs],
                    "values_in": stage.get("values_in", [t.name for t in inputs]),
                    "outputs": [t.name for t in outputs],
                    "token_values": stage.get("token_values", []),
                    "count": stage.get("count"),
                    "buckets": stage.get("buckets") or [],
                    "reshaped": reshaped,
                }
            )
        final = manifest.get("final_outputs") or {n: n for n in models[-1]["outputs"]}
        pipeline = {"stages": models, "final_outputs": final, "input_shape": manifest["model"]["input_shape"]}
        (tmp / "pipeline.json").write_text(json.dumps(pipeline, indent=2) + "\n")
        shutil.copyfile(CLIENT_SOURCE, tmp / "client.py")
        (tmp / "README.md").write_text(_readme(manifest, models, plugin, tensorrt))
        if plugin:
            shutil.copyfile(bundle / plugin, tmp / plugin)
        publish(tmp, repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("export-triton: wrote %s (%d model(s))", repo, len(models))
    return pipeline
