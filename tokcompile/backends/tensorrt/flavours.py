"""The two TensorRT flavours as backends: ``tensorrt`` and ``tensorrt-rtx``.

They share the profile plan, the build (build.py) and the runner (run.py); a flavour supplies
its module, its build targets and what it can do:

| | ``tensorrt`` | ``tensorrt-rtx`` (TensorRT for RTX) |
|---|---|---|
| module | ``tensorrt`` | ``tensorrt_rtx`` |
| builds on | the target GPU | any machine, ahead of time (CPU-only included) |
| targets | the building GPU's SM | ``--target-sm`` (default: every supported SM from Ampere, 8.0, on) |
| timing cache | ``--timing-cache`` (default per GPU and version) | none: its timing-cache calls are no-ops since 1.2 |
| plugins | ``--plugins``, ``--plugin-lib`` | none: the 1.7 ONNX parser aborts on a plugin layer |
| runs | deserialize, execute | deserialize, JIT-compile for the GPU at context creation (runtime cache) |
| engine name | ``stage1.trt10.13-sm90.engine`` | ``stage1.rtx1.7-sm80_86.engine`` |
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from ... import _defaults
from ...errors import TokcompileError
from ...manifest import EnginesRecord, Manifest, Profile, StageEntry
from ..base import BackendBase, BuildOptions, BuildOutput, Loaded, parse_target_sm
from . import env
from .build import build_stages
from .plugins import load_plugin_library, resolve_plugin_lib
from .profiles import batch_limits
from .run import Contexts, PlainContexts, stage_calls

logger = logging.getLogger(__name__)


def write_atomic(path: Path, data: Any) -> None:
    """Write bytes (or a buffer) to ``path`` through a temporary name, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(memoryview(data))
    os.replace(tmp, path)


class TensorRTFamily(BackendBase):
    """What both flavours do the same way."""

    module = ""
    tag = ""
    install = ""
    device = "gpu"

    def trt(self) -> ModuleType:
        return env.import_trt(self.module)

    def plan(
        self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions
    ) -> list[list[Profile]]:
        try:
            return super().plan(directory, stages, full_count, options)
        except ValueError as exc:
            raise TokcompileError(
                f"{exc}; TensorRT profiles cover batch, token counts and the extra dims the manifest records, so "
                f"--backend {self.name} cannot build this graph: use --backend onnxruntime"
            ) from None

    def block(self, trt: ModuleType, options: BuildOptions, target_sm: list[int]) -> EnginesRecord:
        max_batch, opt_batch = batch_limits(options.max_batch)
        return EnginesRecord(
            flavour=self.name,
            version=str(trt.__version__),
            max_batch=max_batch,
            opt_batch=opt_batch,
            target_sm=target_sm,
        )

    def unavailable(self, manifest: Manifest) -> Optional[str]:
        return env.run_problem(self.module, self.install)

    def check_runs_here(self, directory: Path, manifest: Manifest) -> EnginesRecord:
        """The manifest's ``tensorrt`` record, once its version and SMs match this machine."""
        block = manifest.tensorrt
        if block is None or any(s.engine is None for s in manifest.stages):
            raise TokcompileError(
                f"bundle '{directory}' has no {self.label} engines (backend {manifest.backend}); "
                f"rebuild it with --backend {self.name}"
            )
        gpu = env.gpu_info()
        trt = self.trt()
        problem = env.check_compatible(
            block,
            self.label,
            str(trt.__version__),
            gpu["compute_capability"] if gpu else "no GPU",
            env.rebuild_command(manifest, directory, self.rebuild_flags(gpu)),
        )
        if problem is not None:
            raise TokcompileError(problem)
        return block

    def rebuild_flags(self, gpu: Optional[dict[str, str]]) -> list[str]:
        return []

    def contexts(self, directory: Path, manifest: Manifest) -> Contexts:
        return PlainContexts()

    def load(self, directory: Path, manifest: Manifest, threads: Optional[int] = None) -> Loaded:
        problem = self.unavailable(manifest)
        if problem is not None:
            raise TokcompileError(
                f"bundle '{directory}' was built for {self.label}, which cannot run here ({problem}); "
                "load it with backend='onnxruntime' to run its ONNX files"
            )
        block = self.check_runs_here(directory, manifest)
        if block.plugin_library:
            load_plugin_library(Path(directory) / block.plugin_library["file"], self.module)
        stages = manifest.stages
        calls = stage_calls(self.trt(), directory, stages, self.contexts(directory, manifest))
        first = stages[0].engine
        return Loaded(calls, first.file if first is not None else stages[0].file, manifest.precision)

    def configure(self, trt: ModuleType, config: Any, options: BuildOptions) -> None:
        return None

    def finish(self, trt: ModuleType, config: Any, options: BuildOptions) -> None:
        return None


class TensorRT(TensorRTFamily):
    """Full TensorRT (10.7+): engines built on, and for, the GPU of the building machine."""

    name = "tensorrt"
    label = "TensorRT"
    needs = "TensorRT and a CUDA GPU"
    module = "tensorrt"
    tag = "trt"
    install = "pip install -e '.[tensorrt]' on a GPU machine"
    options = frozenset({"plugin_lib", "timing_cache", "max_batch"})

    def probe(self) -> Optional[str]:
        problem = env.import_problem(self.module, self.install)
        if problem is None and env.gpu_info() is None:
            return "no CUDA GPU is visible"
        return problem

    def check_options(self, options: BuildOptions) -> BuildOptions:
        options = super().check_options(options)
        return dataclasses.replace(options, plugin_lib=resolve_plugin_lib(options.plugin_lib))

    def lowering(self, mode: str, ops: Iterable[Any]) -> str:
        """Refuse a mode that lowers an op without exact native lowering (``native=False``) to its
        body: TensorRT cannot run such a body as specified, e.g. one that needs float64 (TensorRT
        has no float64 type, its parser turns DOUBLE into FLOAT: ``importerUtils.cpp``
        ``convertDtype``, line 325 in 10.10), so selections could differ from the reference. No op
        needs this today (AtsSample's body was rewritten in float32 + exact int64 for issue 9)."""
        for op in ops:
            lowered_natively = mode == "off" or not getattr(op, "plugin", False)
            if lowered_natively and not getattr(op, "native", True):
                name = getattr(op, "onnx_name", "?")
                raise TokcompileError(
                    f"--plugins {mode} lowers {name} to its ONNX body, which TensorRT cannot run as specified; "
                    "use --plugins auto or on with --backend tensorrt"
                )
        return mode

    def build(self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions) -> BuildOutput:
        trt = self.trt()
        gpu = env.gpu_info()
        if gpu is None:
            raise TokcompileError("--backend tensorrt needs a CUDA GPU and none is visible; use --backend onnxruntime")
        version = str(trt.__version__)
        if options.timing_cache is None:
            options = dataclasses.replace(options, timing_cache=env.cache_path("timing", gpu, self.tag, version))
        needs = sorted({op for s in stages for op in s.plugin_nodes})
        if needs and options.plugin_lib is None:
            raise TokcompileError(
                f"the graph routes {', '.join(needs)} to TensorRT plugins but no plugin library was found: build the "
                f"plugins with cmake (README: TensorRT) and pass --plugin-lib PATH or set ${_defaults.PLUGIN_LIB_ENV}"
            )
        digest = load_plugin_library(options.plugin_lib, self.module) if options.plugin_lib is not None else None
        sm = env.sm_number(gpu["compute_capability"])
        engines = build_stages(trt, self, directory, stages, full_count, options, [sm])
        files = [e.file for e in engines]
        block = dataclasses.replace(
            self.block(trt, options, [sm]), gpu=gpu["name"], compute_capability=gpu["compute_capability"]
        )
        lib = options.plugin_lib
        if lib is not None and digest is not None and any(e.plugin_layers for e in engines):
            shutil.copy2(lib, directory / lib.name)
            files.append(lib.name)
            block.plugin_library = {"file": lib.name, "sha256": digest}
        elif lib is not None:
            logger.info("tensorrt: no stage uses a plugin of %s (all native layers); not copied into the bundle", lib)
        logger.info("tensorrt: timing cache %s", options.timing_cache)
        return BuildOutput(files, engines, block)

    def configure(self, trt: ModuleType, config: Any, options: BuildOptions) -> None:
        """Start from the timing cache on disk (a cache of another GPU or version is rejected)."""
        path = Path(options.timing_cache).expanduser() if options.timing_cache is not None else None
        data = path.read_bytes() if path is not None and path.is_file() else b""
        timing_cache = config.create_timing_cache(data)
        config.set_timing_cache(timing_cache, False)

    def finish(self, trt: ModuleType, config: Any, options: BuildOptions) -> None:
        if options.timing_cache is not None:
            timing_cache = config.get_timing_cache()
            write_atomic(Path(options.timing_cache).expanduser(), timing_cache.serialize())


class TensorRTRtx(TensorRTFamily):
    """TensorRT for RTX (1.x): engines built ahead of time on any machine for a list of SMs
    (Ampere and later; Turing on request, fp16 only), JIT-compiled for the GPU when loaded."""

    name = "tensorrt-rtx"
    label = "TensorRT for RTX"
    needs = "TensorRT for RTX (tensorrt_rtx)"
    module = "tensorrt_rtx"
    tag = "rtx"
    install = "pip install tensorrt-rtx-cu13"
    options = frozenset({"max_batch", "target_sm"})
    refusals = {
        "timing_cache": "TensorRT for RTX has no timing cache (its timing-cache calls are no-ops since 1.2)",
        "plugin_lib": "TensorRT for RTX 1.7's ONNX parser aborts on plugin layers",
    }

    def probe(self) -> Optional[str]:
        return env.import_problem(self.module, self.install)

    def supported_sm(self) -> list[int]:
        """Every SM the installed TensorRT for RTX builds for (its ComputeCapability.SM* members)."""
        trt = self.trt()
        members = trt.ComputeCapability.__members__
        return sorted(int(name[2:]) for name in members if name.startswith("SM") and name[2:].isdigit())

    def check_options(self, options: BuildOptions) -> BuildOptions:
        options = super().check_options(options)
        supported = self.supported_sm()
        trt = self.trt()
        label = f"{self.label} {trt.__version__}"
        if options.target_sm is None:
            target = [sm for sm in supported if sm >= _defaults.RTX_MIN_DEFAULT_SM]
        else:
            target = list(parse_target_sm(options.target_sm, supported, label))
        return dataclasses.replace(options, target_sm=tuple(target))

    def lowering(self, mode: str, ops: Iterable[Any]) -> str:
        """No plugin nodes: ``on`` is refused, ``auto`` and ``off`` export every op's body."""
        if mode == "on":
            raise TokcompileError(
                f"--plugins on is not possible with --backend {self.name}: TensorRT for RTX 1.7's ONNX parser aborts "
                "on plugin layers; use --plugins auto (every token op as native layers)"
            )
        for op in ops:
            if getattr(op, "plugin", False) and not getattr(op, "native", True):
                logger.warning(
                    "%s has no exact native lowering (its body was written for a plugin) and TensorRT for RTX runs "
                    "no plugins: building its ONNX body as native layers",
                    getattr(op, "onnx_name", op),
                )
        return "off"

    def build(self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions) -> BuildOutput:
        trt = self.trt()
        target = [int(sm) for sm in options.target_sm or ()]
        engines = build_stages(trt, self, directory, stages, full_count, options, target)
        return BuildOutput([e.file for e in engines], engines, self.block(trt, options, target))

    def configure(self, trt: ModuleType, config: Any, options: BuildOptions) -> None:
        """Build for exactly ``target_sm`` (an engine with targets runs only on those SMs)."""
        target = [int(sm) for sm in options.target_sm or ()]
        config.num_compute_capabilities = len(target)
        for i, sm in enumerate(target):
            config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{sm}"), i)

    def rebuild_flags(self, gpu: Optional[dict[str, str]]) -> list[str]:
        return [f"--target-sm {env.sm_number(gpu['compute_capability'])}"] if gpu else []

    def contexts(self, directory: Path, manifest: Manifest) -> Contexts:
        gpu = env.gpu_info()
        if gpu is None:
            return RuntimeCaches({})
        trt = self.trt()
        folder = env.cache_path("runtime", gpu, self.tag, str(trt.__version__)).with_suffix("")
        paths = {}
        for k, stage in enumerate(manifest.stages):
            built = stage.engine
            entry = manifest.files.get(built.file) if built is not None else None
            if entry is not None:
                paths[k] = folder / f"{entry.sha256[:16]}.cache"
        return RuntimeCaches(paths)


class RuntimeCaches:
    """TensorRT for RTX compiles its kernels for this GPU when a context is created (and kernels
    specialised for new shapes on first use); a runtime cache per engine keeps them between runs.

    ``paths``: stage index → cache file (per GPU model and TensorRT for RTX version, per engine
    content; TensorRT ignores and replaces a cache from another GPU, version or CUDA). The cache
    is saved after the context is created and after each stage's first call on each profile.
    """

    def __init__(self, paths: dict[int, Path]) -> None:
        self.paths = paths
        self.held: dict[int, tuple[Any, Any]] = {}  # stage → (runtime config, cache): outlive the context
        self.seen: set[tuple[int, int]] = set()

    def create(self, stage: int, engine: Any) -> Any:
        runtime_config = engine.create_runtime_config()
        runtime_cache = runtime_config.create_runtime_cache()
        path = self.paths.get(stage)
        if path is not None and path.is_file():
            runtime_cache.deserialize(path.read_bytes())
        runtime_config.set_runtime_cache(runtime_cache)
        context = engine.create_execution_context(runtime_config)
        self.held[stage] = (runtime_config, runtime_cache)
        self.save(stage)
        return context

    def after_call(self, stage: int, profile: int) -> None:
        if (stage, profile) not in self.seen:
            self.seen.add((stage, profile))
            self.save(stage)

    def save(self, stage: int) -> None:
        path = self.paths.get(stage)
        if path is None or stage not in self.held:
            return
        try:
            _, runtime_cache = self.held[stage]
            write_atomic(path, runtime_cache.serialize())
        except OSError as exc:  # a read-only home must not stop inference
            logger.warning("could not save the TensorRT for RTX runtime cache %s: %s", path, exc)
