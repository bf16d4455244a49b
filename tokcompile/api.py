"""``tokcompile.build``: model + method → bundle directory (DESIGN.md §1)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from . import __version__, _defaults, outputs
from .errors import TokcompileError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TWIN_FILE = "model.fp32.onnx"
REPORT_FILE = "report.md"


@dataclass
class BuildResult:
    bundle: Path
    manifest: dict[str, Any]
    seconds: float


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import timm
    import torch

    return {
        "tokcompile": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Log only warnings from logger ``name`` inside the block."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _fingerprint(model: str, weights: dict[str, Any], method: str, params: Any, precision: str, backend: str) -> str:
    key = json.dumps([model, weights.get("digest"), method, params, precision, backend], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _export_model(
    gm: Any, spec: Any, directory: Path, prefix: str, plugins: Optional[str] = None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Export ``gm`` as one file (``<prefix>.onnx``) or, when split, one file per stage, with the
    ``plugins`` lowering (on|off|auto). Returns manifest stage entries and model output name →
    value name.
    """
    from .export.onnx import onnx_from_graph_module
    from .export.stages import cut_stages, export_stages
    from .passes.graph_outputs import named_outputs
    from .passes.names import STAGE_KEY

    names = named_outputs(gm)
    if not any(STAGE_KEY in n.meta and n.meta[STAGE_KEY] > 0 for n in gm.graph.nodes):
        facts = onnx_from_graph_module(gm, spec.input_shape, directory / f"{prefix}.onnx", names, plugins=plugins)
        entry = {"index": 0, "name": "main", "file": f"{prefix}.onnx", **facts, "values_in": facts["inputs"]}
        return [entry], {n: n for n in names}
    stages, final = cut_stages(gm)
    entries = export_stages(gm, stages, spec.input_shape, directory, prefix, plugins=plugins)
    for entry, stage in zip(entries, stages):
        entry["values_in"] = stage.inputs
    return entries, final


def rebuild(
    manifest: dict[str, Any],
    method: Optional[str] = None,
    precision: Optional[str] = None,
    weights: Optional[str] = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """The eager GraphModule a bundle was built from (or its dense twin with ``method='none'``).

    The weights are recreated from the manifest's record, or read from ``weights`` (a checkpoint
    path overriding the recorded one, for a machine where that path does not exist), and must
    hash to the recorded digest.
    """
    from .methods import adapt_checkpoint, apply_method, get_method, resolve_config
    from .models import create_model

    record = manifest["weights"]
    if weights is None and record["source"] == "file" and not Path(record["path"]).is_file():
        raise TokcompileError(
            f"the checkpoint this bundle was built from, '{record['path']}', is not on this machine; "
            "pass a copy of it with --weights PATH"
        )
    source = weights if weights is not None else record["path"] if record["source"] == "file" else record["source"]
    model, spec, got, method_state = create_model(
        manifest["model"]["timm_name"],
        weights=source,
        seed=record.get("seed"),
        checkpoint_adapter=adapt_checkpoint,
        **manifest["model"].get("kwargs", {}),
    )
    if got["digest"] != record["digest"]:
        if weights is not None:
            raise TokcompileError(
                f"--weights '{weights}' holds other weights than this bundle was built with (digest differs); "
                "pass the checkpoint the bundle was built from"
            )
        raise TokcompileError(
            f"the weights for this bundle ({source}) no longer match the ones it was built with; rebuild the bundle"
        )
    m = get_method(method or manifest["method"]["name"])
    params = manifest["method"]["params"] if m.name == manifest["method"]["name"] else {}
    config = resolve_config(m, spec, params)
    gm, info = apply_method(model, spec, m, config, precision or manifest["precision"], method_state=method_state)
    return gm, spec, info


def build(
    model: str,
    method: Optional[str] = None,
    precision: Optional[str] = None,
    weights: Optional[str] = None,
    output: Optional[str | Path] = None,
    backend: Optional[str] = None,
    force: bool = False,
    seed: Optional[int] = None,
    model_kwargs: Optional[dict[str, Any]] = None,
    buckets: Optional[str | list[int]] = None,
    max_buckets: Optional[int] = None,
    calib: Optional[str | Path] = None,
    profile: Optional[str] = None,
    plugins: Optional[str] = None,
    plugin_lib: Optional[str | Path] = None,
    timing_cache: Optional[str | Path] = None,
    max_batch: Optional[int] = None,
    target_sm: Optional[str | Sequence[int]] = None,
    tf32: Optional[bool] = None,
    **params: Any,
) -> BuildResult:
    """Build a bundle. ``params`` are the method's (e.g. keep_rate=0.7, layers=(3, 6, 9), fuse=True);
    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``{"img_size": 224}``) and are recorded.
    For methods with per-image token counts (staged bundles): ``buckets`` is ``"auto"`` (chosen
    from ``profile``'s latency curve and the counts seen on ``calib`` images, at most
    ``max_buckets`` per stage) or a list of token counts used for every stage.
    ``plugins`` (on|off|auto, default auto) picks the token-op nodes that TensorRT runs as
    plugins instead of native layers (ops/lowering.py); it is recorded as ``manifest["lowering"]``.
    ``backend``: onnxruntime (default), tensorrt (one engine per stage file, next to the ONNX
    files, built on this machine's GPU; ``plugin_lib``, ``timing_cache``, ``max_batch`` apply),
    tensorrt-rtx (TensorRT for RTX engines built ahead of time on any machine for ``target_sm``,
    e.g. "80,86", default every SM it supports from 80 on; ``max_batch`` applies) or auto (TensorRT when it
    imports and a GPU is visible, else ONNX Runtime). ``tf32`` (default off, _defaults.TRT_TF32)
    lets TensorRT run fp32 matrix products in TF32; it is recorded for the engine commands of
    report.md too.

    Returns the bundle path and its manifest. Raises TokcompileError for user mistakes; on
    any failure nothing is left at ``output``.
    """
    from .backends import onnxruntime as ort_backend
    from .backends import resolve
    from .backends.base import BuildOptions
    from .methods import METHODS, adapt_checkpoint, apply_method, get_method, resolve_config
    from .models import create_model
    from .models.flops import count_gmacs
    from .ops import TOKEN_OPS
    from .ops.lowering import check_mode as check_plugin_mode
    from .ops.lowering import lowering_summary
    from .precision import check_precision
    from .runtime import bundle as bundle_io
    from .runtime.calibrate import calibrate, plan_calibration
    from .runtime.report import write_report

    start = time.perf_counter()
    method_name = method or _defaults.METHOD
    precision = precision or _defaults.PRECISION
    backend = backend or _defaults.BACKEND
    check_precision(precision)
    plugins = check_plugin_mode(plugins)
    requested = BuildOptions(
        max_batch=max_batch,
        timing_cache=Path(timing_cache) if timing_cache is not None else None,
        plugin_lib=Path(plugin_lib) if plugin_lib is not None else None,
        target_sm=target_sm,
        tf32=tf32,
    )
    chosen, options = resolve(backend, requested)
    chosen.lowering(plugins, ())  # a mode the backend cannot build is refused before any work
    m = get_method(method_name)
    out = Path(output) if output is not None else Path(f"{model}-{m.name}-{precision}")
    # Before the model loads (seconds): refuse outputs that no build may write; whether an existing
    # bundle is this very build is known once the weights are hashed, under the lock below.
    outputs.check_directory(out, bundle_io.owned_files, "tokcompile bundle", force=True)
    model_kwargs = dict(model_kwargs or {})
    torch_model, spec, weights_record, method_state = create_model(
        model, weights=weights, seed=seed, checkpoint_adapter=adapt_checkpoint, **model_kwargs
    )
    config = resolve_config(m, spec, params)
    method_params = config.params() if config is not None else {}
    build_choices = {"plugins": plugins, "tf32": options.tf32, "target_sm": options.target_sm}
    fingerprint = _fingerprint(
        spec.name, weights_record, m.name, [method_params, model_kwargs, build_choices], precision, chosen.name
    )
    with outputs.output_lock(out):  # one build writes an output at a time
        bundle_io.check_output(out, fingerprint, force)

        staged_flags = {"--buckets": buckets, "--max-buckets": max_buckets, "--calib": calib, "--profile": profile}
        if not m.staged and any(v is not None for v in staged_flags.values()):
            given = ", ".join(k for k, v in staged_flags.items() if v is not None)
            raise TokcompileError(
                f"{given} apply to methods with per-image token counts "
                f"({', '.join(n for n, x in METHODS.items() if x.staged)}); method '{m.name}' has static counts"
            )
        plan = plan_calibration(spec, calib, buckets, max_buckets, profile) if m.staged else None
        if "notice" in weights_record:  # every input is valid now: say it once, prominently
            logger.warning("%s", weights_record.pop("notice"))
        gm, info = apply_method(torch_model, spec, m, config, precision, method_state=method_state)
        for warning in info.get("method_warnings", []):
            logger.warning("WARNING: %s", warning)
        # the lowering this backend can build: e.g. no plugin nodes for one that runs no plugins
        ops = {TOKEN_OPS[n.target] for n in gm.graph.nodes if n.target in TOKEN_OPS}
        lowering = chosen.lowering(plugins, ops)
        staged = info.get("stages", 1) > 1
        gmacs_dense = count_gmacs(torch_model, spec.input_shape)
        with bundle_io.staging_dir(out) as tmp:
            stages, final = _export_model(gm, spec, tmp, "stage" if staged else "model", lowering)
            files = [s["file"] for s in stages]
            for s in stages:
                s["onnxruntime_file"], s["onnxruntime_precision"] = s["file"], precision
            # The fp32 graph serves the twin (if needed), GMAC counting and calibration: build it once.
            if precision == "fp32":
                reduced_fp32 = gm
            else:
                with _quiet("tokcompile.passes"):  # the same passes again; their figures were logged above
                    reduced_fp32 = apply_method(torch_model, spec, m, config, "fp32", method_state=method_state)[0]
            reason = ort_backend.cannot_execute(tmp / stages[0]["file"]) if precision != "fp32" else None
            if reason is not None:
                logger.warning(
                    "ONNX Runtime cannot execute the %s graph on this CPU (%s); exporting an fp32 twin "
                    "for checks (TensorRT and GPUs run the %s files themselves)",
                    precision,
                    reason,
                    precision,
                )
                twins, _ = _export_model(reduced_fp32, spec, tmp, "stage_fp32_" if staged else "model.fp32", lowering)
                for s, t in zip(stages, twins):
                    s.update(onnxruntime_file=t["file"], onnxruntime_precision="fp32", onnxruntime_note=reason)
                files += [t["file"] for t in twins]
            if plan is not None:
                calibration = calibrate(plan, reduced_fp32, spec, stages, final)
                gmacs = calibration.pop("gmacs")
                tokens = calibration
            else:
                gmacs = count_gmacs(reduced_fp32, spec.input_shape) if m.pipeline else gmacs_dense
                tokens = info["tokens"]
            # after calibration: the TensorRT profiles follow each stage's buckets
            chosen.plan(tmp, stages, spec.num_tokens, options)
            built = chosen.build(tmp, stages, spec.num_tokens, options)
            files += built.files
            manifest: dict[str, Any] = {
                "format": bundle_io.FORMAT,
                "format_version": bundle_io.FORMAT_VERSION,
                "fingerprint": fingerprint,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": {
                    "name": model,
                    "timm_name": spec.name,
                    "kwargs": model_kwargs,
                    "input_shape": list(spec.input_shape),
                    "num_classes": spec.num_classes,
                    "depth": spec.depth,
                    "embed_dim": spec.embed_dim,
                    "num_heads": spec.num_heads,
                    "num_prefix_tokens": spec.num_prefix_tokens,
                    "patch_size": list(spec.patch_size),
                    "grid": list(spec.grid),
                },
                "weights": weights_record,
                "method": {
                    "name": m.name,
                    "params": method_params,
                    **({"warnings": info["method_warnings"]} if info.get("method_warnings") else {}),
                },
                "precision": precision,
                "backend": chosen.name,
                "tf32": options.tf32,
                "lowering": {
                    **lowering_summary(lowering, stages),
                    **({"requested": plugins} if lowering != plugins else {}),
                },
                "tokens": tokens,
                "gmacs": {
                    "reduced": round(gmacs, 4),
                    "dense": round(gmacs_dense, 4),
                    "ideal_speedup": round(gmacs_dense / gmacs, 4),
                },
                "stages": stages,
                "final_outputs": final,
                "versions": _versions(),
            }
            if built.block_key is not None and built.block is not None:
                manifest[built.block_key] = built.block
                manifest["versions"][chosen.name] = built.block["version"]
            manifest["build_seconds"] = round(time.perf_counter() - start, 1)
            manifest["files"] = bundle_io.hash_files(tmp, files)
            write_report(tmp / REPORT_FILE, manifest)
            bundle_io.commit(tmp, out, manifest, [REPORT_FILE], fingerprint, force)
    logger.info("build: wrote %s", out)
    return BuildResult(out, manifest, manifest["build_seconds"])
