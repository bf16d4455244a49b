"""``tokcompile.build``: model + method → bundle directory (DESIGN.md §1).

The build is one sequence, each step a method of ``_Build``:

    resolve config → load weights → capture graph and apply method → export → calibrate
    → backend build → manifest → commit

Every user mistake surfaces in the first step (``BuildConfig.resolve``), before any weight loads;
the bundle is written into a hidden temporary folder and published atomically at the end.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from . import outputs
from ._version import __version__
from .config import BuildConfig
from .manifest import (
    BlockTokens,
    EnginesRecord,
    Gmacs,
    Manifest,
    MethodRecord,
    ModelRecord,
    TokensRecord,
    WeightsRecord,
)

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    bundle: Path
    manifest: Manifest
    seconds: float


def build(model: str | BuildConfig, **kwargs: Any) -> BuildResult:
    """Build a bundle from a ``BuildConfig``, or from the arguments of ``BuildConfig.resolve``.

    ``model``: an alias (deit_s) or a timm ViT name, with ``weights`` (auto | pretrained | random
    | PATH), ``seed`` and ``model_kwargs`` (``timm.create_model`` arguments such as ``{"img_size":
    224}``); ``method`` and its parameters as keywords (``keep_rate=0.7``, ``layers=(3, 6, 9)``,
    ``r=13``, ...; ``tokcompile list methods``); ``precision`` (fp32 | fp16 | bf16); ``backend``
    (onnxruntime | tensorrt | tensorrt-rtx | auto) with ``max_batch``, ``plugin_lib``,
    ``timing_cache``, ``target_sm``, ``tf32``; ``plugins`` (on | off | auto); for methods with
    per-image token counts ``buckets`` ("auto" or token counts), ``max_buckets``, ``calib`` (image
    folder) and ``profile``; ``output`` and ``force``. Defaults: ``tokcompile/_defaults.py``.

    Returns the bundle path, its manifest and the build time. Raises TokcompileError for user
    mistakes (before anything slow happens); on any failure nothing is left at the output.
    """
    start = time.perf_counter()
    config = model if isinstance(model, BuildConfig) else BuildConfig.resolve(model, **kwargs)
    with outputs.output_lock(config.output):  # one build writes an output at a time
        run = _Build(config)
        run.load_weights()
        run.apply_method()
        with outputs.staging_dir(config.output) as tmp:
            run.export(tmp)
            run.calibrate()
            run.backend_build(tmp)
            manifest = run.manifest(start)
            run.commit(tmp, manifest)
    logger.info("build: wrote %s", config.output)
    return BuildResult(config.output, manifest, manifest.build_seconds or 0.0)


class _Build:
    """The state of one build as its steps fill it in (``build`` calls them in order)."""

    def __init__(self, config: BuildConfig) -> None:
        self.config = config
        self.spec = config.model.spec
        self.files: list[str] = []
        self.record: Optional[EnginesRecord] = None
        self._fp32: Any = None

    def load_weights(self) -> None:
        """The model with its weights; then the output check that needs the weights' digest."""
        from .methods import adapt_checkpoint
        from .models import create_model
        from .runtime.bundle import check_output

        choice = self.config.model
        self.torch_model, _, record, self.method_state = create_model(
            choice.name, weights=choice.weights, seed=choice.seed, checkpoint_adapter=adapt_checkpoint, **choice.kwargs
        )
        notice = record.pop("notice", None)
        self.weights = WeightsRecord(**record)
        self.fingerprint = self.config.fingerprint(self.weights.digest)
        check_output(self.config.output, self.fingerprint, self.config.force)
        if notice:  # every input is valid now: say it once, prominently
            logger.warning("%s", notice)

    def apply_method(self) -> None:
        """Capture the model; the method's passes, the precision pass and stage splitting."""
        from .methods import apply_method

        c = self.config
        self.gm, self.info = apply_method(
            self.torch_model, self.spec, c.method, c.method_config, c.precision, method_state=self.method_state
        )
        for warning in self.info.get("method_warnings", []):
            logger.warning("WARNING: %s", warning)

    def fp32_graph(self) -> Any:
        """The method's graph in fp32 (the twin, GMAC counting and calibration share it)."""
        from .methods import apply_method

        if self.config.precision == "fp32":
            return self.gm
        if self._fp32 is None:
            c = self.config
            with _quiet("tokcompile.passes"):  # the same passes again; their figures were logged above
                self._fp32 = apply_method(
                    self.torch_model, self.spec, c.method, c.method_config, "fp32", method_state=self.method_state
                )[0]
        return self._fp32

    def export(self, tmp: Path) -> None:
        """The stage ONNX files in the lowering the backend builds, plus fp32 twins where ONNX
        Runtime's CPU provider cannot run the precision (bf16)."""
        from .backends.onnxruntime import cannot_execute
        from .export.stages import export_model, is_staged
        from .ops import TOKEN_OPS

        c = self.config
        ops = {TOKEN_OPS[n.target] for n in self.gm.graph.nodes if n.target in TOKEN_OPS}
        self.lowering = c.backend.lowering(c.plugins, ops)
        prefix = "stage" if is_staged(self.gm) else "model"
        self.stages, self.final = export_model(self.gm, self.spec.input_shape, tmp, prefix, c.precision, self.lowering)
        self.files += [s.file for s in self.stages]
        reason = cannot_execute(tmp / self.stages[0].file) if c.precision != "fp32" else None
        if reason is None:
            return
        logger.warning(
            "ONNX Runtime cannot execute the %s graph on this CPU (%s); exporting an fp32 twin for checks "
            "(TensorRT and GPUs run the %s files themselves)",
            c.precision,
            reason,
            c.precision,
        )
        twin = "stage_fp32_" if prefix == "stage" else "model.fp32"
        twins, _ = export_model(self.fp32_graph(), self.spec.input_shape, tmp, twin, "fp32", self.lowering)
        for stage, t in zip(self.stages, twins):
            stage.onnxruntime_file, stage.onnxruntime_precision, stage.onnxruntime_note = t.file, "fp32", reason
        self.files += [t.file for t in twins]

    def calibrate(self) -> None:
        """Token counts (per image, on calibration images, for staged methods), buckets, GMACs."""
        from .models.flops import count_gmacs
        from .runtime.calibrate import calibrate, load_calibration

        c = self.config
        dense = count_gmacs(self.torch_model, self.spec.input_shape)
        if c.staging is not None:
            found = calibrate(
                load_calibration(self.spec, c.staging), self.fp32_graph(), self.spec, self.stages, self.final
            )
            for stage in self.stages:
                stage.buckets = found.buckets.get(stage.index, [])
            self.tokens, reduced = found.tokens, found.gmacs
        else:
            recorded = self.info["tokens"]
            blocks = [BlockTokens(**b) for b in recorded["blocks"]]
            self.tokens = TokensRecord(list(recorded["sequence"]), blocks=blocks)
            reduced = count_gmacs(self.fp32_graph(), self.spec.input_shape) if c.method.pipeline else dense
        self.gmacs = Gmacs(round(reduced, 4), round(dense, 4), round(dense / reduced, 4))

    def backend_build(self, tmp: Path) -> None:
        """The backend's profiles (after calibration: they follow each stage's buckets) and build."""
        backend, options, full = self.config.backend, self.config.backend_options, self.spec.num_tokens
        for stage, plan in zip(self.stages, backend.plan(tmp, self.stages, full, options)):
            stage.tensorrt_plan = plan
        built = backend.build(tmp, self.stages, full, options)
        for stage, engine in zip(self.stages, built.engines):
            stage.engine = engine
        self.files += built.files
        self.record = built.record

    def manifest(self, start: float) -> Manifest:
        """The manifest: the one place its content is assembled."""
        from .ops.lowering import lowering_record

        c, spec = self.config, self.spec
        versions = _versions()
        if self.record is not None:
            versions[c.backend.name] = self.record.version
        return Manifest(
            fingerprint=self.fingerprint,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model=ModelRecord(
                name=c.model.name,
                timm_name=spec.name,
                kwargs=dict(c.model.kwargs),
                input_shape=list(spec.input_shape),
                num_classes=spec.num_classes,
                depth=spec.depth,
                embed_dim=spec.embed_dim,
                num_heads=spec.num_heads,
                num_prefix_tokens=spec.num_prefix_tokens,
                patch_size=list(spec.patch_size),
                grid=list(spec.grid),
            ),
            weights=self.weights,
            method=MethodRecord(c.method.name, c.method_params, list(self.info.get("method_warnings", []))),
            precision=c.precision,
            backend=c.backend.name,
            tf32=c.backend_options.tf32,
            lowering=lowering_record(self.lowering, c.plugins, self.stages),
            tokens=self.tokens,
            gmacs=self.gmacs,
            stages=self.stages,
            final_outputs=self.final,
            versions=versions,
            files={},
            build_seconds=round(time.perf_counter() - start, 1),
            tensorrt=self.record,
        )

    def commit(self, tmp: Path, manifest: Manifest) -> None:
        """Hash the files, write engines.sh and report.md, write the manifest last and publish."""
        from .runtime.bundle import commit, hash_files
        from .runtime.report import ENGINES_FILE, REPORT_FILE, engines_script, has_engine_commands, write_report

        files = list(self.files)
        if has_engine_commands(manifest):
            (tmp / ENGINES_FILE).write_text(engines_script(manifest))
            files.append(ENGINES_FILE)
        manifest.files = hash_files(tmp, files)
        write_report(tmp / REPORT_FILE, manifest)
        commit(tmp, self.config.output, manifest, [REPORT_FILE], self.config.force)


# ----------------------------------------------------------------------------------- helpers


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
