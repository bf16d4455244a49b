"""ONNX stage file → serialized engine with exactly the planned optimization profiles.

One code path for both flavours: the TensorRT module (``tensorrt`` or ``tensorrt_rtx``) is a
parameter, and the flavour adds what differs (build targets, timing cache) through
``configure``/``finish``. The network is strongly typed (TensorRT 11 and TensorRT for RTX build
nothing else; 10.x needs the flag), so precision comes from the ONNX tensor types.

A failure is one line naming the stage file and the profile (bucket) and quoting TensorRT's
first error, captured by a logger of our own: when a build with every profile fails, each
profile is built alone to find the bucket that fails.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Protocol

from ...errors import TokcompileError
from ...manifest import EngineEntry, StageEntry
from ..base import BuildOptions
from .profiles import describe_profile, engine_file_name, extra_dim_inputs

logger = logging.getLogger(__name__)

ERROR_CHARS = 500  # TensorRT's Myelin errors run to ~450 characters; the useful part is at the end


class EngineBuildError(TokcompileError):
    """TensorRT could not parse or build a stage file; the message names the file and profile."""


class Flavour(Protocol):
    """What a TensorRT flavour adds to the shared build (see flavours.py)."""

    module: str
    label: str
    tag: str

    def configure(self, trt: ModuleType, config: Any, options: BuildOptions) -> None: ...

    def finish(self, trt: ModuleType, config: Any, options: BuildOptions) -> None: ...


_LOGGER_CLASSES: dict[str, type] = {}


def capture_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that keeps every error TensorRT reports (``.errors``, in order) and passes
    warnings to Python logging at DEBUG (a parse warns once per repeated node name)."""
    cls = _LOGGER_CLASSES.get(trt.__name__)
    if cls is None:

        class CaptureLogger(trt.ILogger):  # type: ignore[name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    logger.debug("%s: %s", trt.__name__, msg)

        cls = _LOGGER_CLASSES[trt.__name__] = CaptureLogger
    return cls()


def one_line(message: str) -> str:
    """TensorRT's multi-line error text as one line of at most ERROR_CHARS characters."""
    text = re.sub(r"\s+", " ", message).strip()
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


@dataclass
class ParsedNetwork:
    """A parsed stage: keep ``builder``/``parser`` alive as long as ``network`` is used."""

    builder: Any
    network: Any
    parser: Any
    inputs: dict[str, tuple[int, ...]]
    layers: int
    plugin_layers: int


def network_from_onnx(trt: ModuleType, path: Path, label: str, log: Any) -> ParsedNetwork:
    """Parse ``path`` into a strongly typed network; a parse failure is one EngineBuildError line."""
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        if errors:
            error = errors[0]
            where = f" at node '{error.node_name()}' ({error.node_operator()})" if error.node_name() else ""
            first = f"{error.desc()}{where}"
        else:
            first = log.errors[0] if log.errors else "no error reported"
        raise EngineBuildError(f"{label} could not parse {path.name}: {one_line(first)}")
    inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(tensor.shape)
    plugin_types = [trt.LayerType.PLUGIN_V2, trt.LayerType.PLUGIN_V3]
    # the legacy IPluginLayer type: TensorRT for RTX has it; it may be gone from other TensorRT versions
    if hasattr(trt.LayerType, "PLUGIN"):
        plugin_types.append(trt.LayerType.PLUGIN)
    plugin_layers = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in plugin_types:
            plugin_layers += 1
    return ParsedNetwork(builder, network, parser, inputs, network.num_layers, plugin_layers)


@dataclass
class EngineBuild:
    """One built stage. ``profiles``: the planned profiles as TensorRT's IOptimizationProfile
    objects hold them (read back with ``get_shape``); ``tf32``: the builder config's TF32 flag."""

    engine: Any  # trt.IHostMemory (buffer protocol)
    profiles: list[dict[str, Any]]
    layers: int
    plugin_layers: int
    tf32: bool
    seconds: float


def _config(trt: ModuleType, parsed: ParsedNetwork, flavour: Flavour, options: BuildOptions, plan: Sequence[dict]):
    """A builder config with ``plan``'s profiles; returns it and the profiles as TensorRT holds them."""
    config = parsed.builder.create_builder_config()
    if options.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    flavour.configure(trt, config, options)
    held = []
    for planned in plan:
        profile = parsed.builder.create_optimization_profile()
        for name, (low, opt, high) in planned["shapes"].items():
            profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"{flavour.label} rejected the optimization profile for {describe_profile(planned)}")
        shapes = {}
        for name in planned["shapes"]:
            shapes[name] = [list(d) for d in profile.get_shape(name)]
        held.append({"bucket": planned["bucket"], "shapes": shapes})
    return config, held


def engine_from_onnx(
    trt: ModuleType,
    flavour: Flavour,
    onnx_path: Path,
    plan: Sequence[dict[str, Any]],
    options: BuildOptions,
    full_count: Optional[int] = None,
) -> EngineBuild:
    """Build ``onnx_path`` with exactly the planned profiles (``StageEntry.tensorrt_plan``).

    Plugins must be loaded already. Raises EngineBuildError (one line: file, profile, TensorRT's
    first error) when TensorRT cannot parse or build it.
    """
    start = time.perf_counter()
    label = f"{flavour.label} {trt.__version__}"
    log = capture_logger(trt)
    parsed = network_from_onnx(trt, onnx_path, label, log)
    planned = set(plan[0]["shapes"]) if plan else set()
    if planned != set(parsed.inputs):
        raise EngineBuildError(
            f"{onnx_path.name}: the planned profiles name inputs {sorted(planned)} but the network has "
            f"{sorted(parsed.inputs)}; rebuild the bundle"
        )
    config, held = _config(trt, parsed, flavour, options, plan)
    engine = parsed.builder.build_serialized_network(parsed.network, config)
    if engine is None:
        first = log.errors[0] if log.errors else "no error reported"
        where = f"all {len(plan)} profiles together"
        for i, profile in enumerate(plan):  # which bucket fails on its own?
            alone = capture_logger(trt)
            single = network_from_onnx(trt, onnx_path, label, alone)
            single_config, _ = _config(trt, single, flavour, options, [profile])
            if single.builder.build_serialized_network(single.network, single_config) is None:
                where = f"{describe_profile(profile, full_count)} (profile #{i} of {len(plan)})"
                first = alone.errors[0] if alone.errors else first
                break
        raise EngineBuildError(f"{label} could not build {onnx_path.name} for {where}: {one_line(first)}")
    flavour.finish(trt, config, options)
    return EngineBuild(
        engine=engine,
        profiles=held,
        layers=parsed.layers,
        plugin_layers=parsed.plugin_layers,
        tf32=bool(config.get_flag(trt.BuilderFlag.TF32)),
        seconds=time.perf_counter() - start,
    )


def build_stages(
    trt: ModuleType,
    flavour: Flavour,
    directory: Path,
    stages: list[StageEntry],
    full_count: int,
    options: BuildOptions,
    target_sm: Sequence[int],
) -> list[EngineEntry]:
    """One engine per stage ONNX file in ``directory``, built from its ``tensorrt_plan``; returns
    each stage's engine entry (profiles and TF32 as TensorRT's profile and config objects hold them)."""
    engines = []
    for k, stage in enumerate(stages):
        name = engine_file_name(Path(stage.file).stem, flavour.tag, trt.__version__, target_sm)
        built = engine_from_onnx(trt, flavour, directory / stage.file, stage.tensorrt_plan, options, full_count)
        wanted = sum(stage.plugin_nodes.values())
        if built.plugin_layers < wanted:
            raise EngineBuildError(
                f"{stage.file} has {wanted} plugin node(s) ({', '.join(stage.plugin_nodes)}) but "
                f"{flavour.label} made {built.plugin_layers} plugin layer(s): the plugin library does not "
                "register them (see README: TensorRT)"
            )
        if built.tf32 != bool(options.tf32):
            raise RuntimeError(f"{flavour.label} kept TF32 {'on' if built.tf32 else 'off'} against the build option")
        (directory / name).write_bytes(memoryview(built.engine))
        engines.append(
            EngineEntry(
                file=name,
                profiles=built.profiles,
                plugin_layers=built.plugin_layers,
                layers=built.layers,
                tf32=built.tf32,
                build_seconds=round(built.seconds, 2),
            )
        )
        extra_dims = extra_dim_inputs(stages, k)
        extra = f", extra dims {sorted(extra_dims)}" if extra_dims else ""
        logger.info(
            "%s: %s → %s, profiles %s%s, %d layers (%d plugin), %.1f MB, %.1f s",
            flavour.tag,
            stage.file,
            name,
            [p["bucket"] for p in built.profiles],
            extra,
            built.layers,
            built.plugin_layers,
            (directory / name).stat().st_size / 1e6,
            built.seconds,
        )
    return engines
