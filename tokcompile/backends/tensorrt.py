"""TensorRT backend: one engine per stage file, one optimization profile per bucket (DESIGN.md §1.6, §4).

Build (TensorRT builder and a CUDA GPU): Polygraphy parses a stage's ONNX file into a strongly
typed network, so precision comes from the ONNX tensor types (TensorRT 11 has no fp16 builder
flag), adds one profile per bucket of the stage's token inputs plus one catch-all profile, and
builds with a persistent timing cache. The ONNX files stay in the bundle: they are what the
engines were built from, and what ONNX Runtime runs where TensorRT is missing.

Run: ``trt_stage_calls`` gives ``runtime/staged.StagedRunner`` one callable per stage. A call
picks the profile whose token count equals the feed's (a count outside every bucket uses the
catch-all profile, so nothing is truncated), sets input shapes and tensor addresses on torch CUDA
buffers and runs ``execute_async_v3`` on one CUDA stream.

Every attribute this module reads from TensorRT objects is listed in ``RUNTIME_API`` (runtime
side, present in the ``tensorrt_lean`` wheel) or ``BUILD_API`` (builder side, full ``tensorrt``
only). tests/backends/test_tensorrt_names.py parses this file and fails on any access to a root
of ``API_ROOTS`` that the lists do not name, then checks the lists against the installed wheels:
the runtime's TensorRT calls are checked without a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import _defaults
from ..errors import TokcompileError

logger = logging.getLogger(__name__)

NAME = "tensorrt"
FALLBACK = "fallback"  # the catch-all profile's "bucket"
REPO_ROOT = Path(__file__).resolve().parents[2]

# trt.DataType member name → torch dtype name (numpy has no bfloat16: such outputs come back fp32)
TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}

# Variable names that hold TensorRT objects in this module → their class ("" = the module).
API_ROOTS = {
    "trt": "",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "network": "INetworkDefinition",
    "layer": "ILayer",
    "tensor": "ITensor",
}
RUNTIME_API = (
    "__version__",
    "Logger",
    "Logger.WARNING",
    "Runtime",
    "Runtime.deserialize_cuda_engine",
    "TensorIOMode.INPUT",
    "ICudaEngine.num_io_tensors",
    "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype",
    "ICudaEngine.num_optimization_profiles",
    "ICudaEngine.get_tensor_profile_shape",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_optimization_profile_async",
    "IExecutionContext.set_input_shape",
    "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
    *(f"DataType.{name}" for name in TRT_TO_TORCH),
)
BUILD_API = (
    "LayerType.PLUGIN_V2",
    "LayerType.PLUGIN_V3",
    "INetworkDefinition.num_inputs",
    "INetworkDefinition.get_input",
    "INetworkDefinition.num_layers",
    "INetworkDefinition.get_layer",
    "ILayer.type",
    "ITensor.name",
    "ITensor.shape",
)

StageCall = Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]


# ---------------------------------------------------------------------------------------------
# Environment: is TensorRT here, which GPU, which version


def gpu_info() -> Optional[dict[str, str]]:
    """``{"name", "compute_capability": "sm_90"}`` of the current CUDA device; None without one.

    torch.cuda when it sees a device, else cuda-python's runtime bindings when importable.
    """
    try:
        import torch

        with warnings.catch_warnings():  # a driver-less machine warns on the first CUDA query
            warnings.simplefilter("ignore")
            if torch.cuda.is_available():
                index = torch.cuda.current_device()
                major, minor = torch.cuda.get_device_capability(index)
                return {"name": torch.cuda.get_device_name(index), "compute_capability": f"sm_{major}{minor}"}
    except Exception:  # a broken CUDA install must not stop the cuda-python fallback
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    ok = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    if err != ok or not count:
        return None
    err, device = cudart.cudaGetDevice()
    if err != ok:
        return None
    err, prop = cudart.cudaGetDeviceProperties(device)
    if err != ok:
        return None
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"sm_{prop.major}{prop.minor}"}


def trt_version() -> str:
    """The installed TensorRT's full version, e.g. '10.13.0.35' (raises ImportError without it)."""
    import tensorrt as trt

    return str(trt.__version__)


def available(torch_cuda: bool = False) -> Optional[str]:
    """None when ``import tensorrt`` works and a CUDA GPU is visible; otherwise the reason, one line.

    ``torch_cuda``: also require torch with CUDA (the runner allocates device buffers with torch).
    """
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install -e '.[tensorrt]' on a GPU machine)"
    except Exception as exc:  # e.g. the wheel is there but libnvinfer cannot load
        return f"import tensorrt failed: {str(exc).strip().splitlines()[0][:160]}"
    if gpu_info() is None:
        return "no CUDA GPU is visible"
    if torch_cuda:
        import torch

        if not torch.cuda.is_available():
            return f"torch {torch.__version__} cannot use the GPU (CPU-only build?)"
    return None


def short_version(version: str) -> str:
    """'10.13.0.35' → '10.13'."""
    return ".".join(version.split(".")[:2])


def engine_file_name(stem: str, version: str, compute_capability: str) -> str:
    """``stage1``, '10.13.0.35', 'sm_90' → ``stage1.trt10.13-sm90.engine``."""
    return f"{stem}.trt{short_version(version)}-{compute_capability.replace('_', '')}.engine"


def default_timing_cache(gpu: Mapping[str, str], version: str) -> Path:
    """Per GPU model and TensorRT version: a cache from another one is rejected by the builder."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-") or "gpu"
    sm = gpu["compute_capability"].replace("_", "")
    return Path(_defaults.TRT_CACHE_DIR).expanduser() / f"timing-{slug}-{sm}-trt{version}.cache"


def check_compatible(
    recorded: Mapping[str, Any],
    version: str,
    compute_capability: str,
    rebuild: str = "'tokcompile build ... --backend tensorrt'",
) -> Optional[str]:
    """None when engines recorded as ``recorded`` (the manifest's ``tensorrt`` block) run here.

    A TensorRT engine runs only with the TensorRT version that built it and on GPUs of the same
    compute capability; deserializing it elsewhere fails inside TensorRT.
    """
    built_version, built_cc = recorded.get("version"), recorded.get("compute_capability")
    if built_version == version and built_cc == compute_capability:
        return None
    return (
        f"engine built with TensorRT {built_version} for {built_cc}; this machine has TensorRT {version} on "
        f"{compute_capability}: rebuild the bundle with {rebuild}"
    )


def rebuild_command(manifest: Mapping[str, Any], directory: Path | str) -> str:
    return (
        f"'tokcompile build {manifest['model']['name']} --method {manifest['method']['name']} "
        f"--precision {manifest['precision']} --backend tensorrt -o {directory} --force'"
    )


def resolve_backend(
    backend: str,
    plugin_lib: Optional[str | Path] = None,
    timing_cache: Optional[str | Path] = None,
    max_batch: Optional[int] = None,
) -> tuple[str, Optional[Path]]:
    """``onnxruntime|tensorrt|auto`` → (the backend to build, the plugin library for TensorRT).

    auto: TensorRT when it imports and a GPU is visible, else ONNX Runtime (one INFO line says
    which and why). Raises TokcompileError before anything is built for ``tensorrt`` without
    TensorRT or GPU, and for TensorRT options given with ``onnxruntime``.
    """
    options = (("--plugin-lib", plugin_lib), ("--timing-cache", timing_cache), ("--max-batch", max_batch))
    given = [flag for flag, value in options if value is not None]
    if backend == "onnxruntime":
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise TokcompileError(f"{', '.join(given)} {verb} to --backend tensorrt (or auto), not onnxruntime")
        return backend, None
    reason = available()
    if backend == "auto":
        if reason is not None:
            logger.info("backend auto: ONNX Runtime, since %s", reason)
            return "onnxruntime", None
        gpu = gpu_info() or {}
        logger.info(
            "backend auto: TensorRT %s on %s (%s)", trt_version(), gpu.get("name"), gpu.get("compute_capability")
        )
    elif reason is not None:
        raise TokcompileError(
            f"--backend tensorrt needs TensorRT and a CUDA GPU: {reason}; use --backend onnxruntime (or auto)"
        )
    if max_batch is not None and max_batch < 1:
        raise TokcompileError(f"--max-batch must be ≥ 1, got {max_batch}")
    return "tensorrt", resolve_plugin_lib(plugin_lib)


# ---------------------------------------------------------------------------------------------
# Plugin library


def resolve_plugin_lib(path: Optional[str | Path]) -> Optional[Path]:
    """``--plugin-lib`` PATH, else $TOKCOMPILE_PLUGIN_LIB, else build/<PLUGIN_LIBRARY> in the repository
    when it exists, else None. A path that is named but missing is a one-line error."""
    if path is not None:
        lib = Path(path)
        if not lib.is_file():
            raise TokcompileError(
                f"--plugin-lib '{lib}' is not a file; build the plugins with cmake (README: TensorRT)"
            )
        return lib
    env = os.environ.get(_defaults.PLUGIN_LIB_ENV)
    if env:
        lib = Path(env)
        if not lib.is_file():
            raise TokcompileError(f"${_defaults.PLUGIN_LIB_ENV}='{env}' is not a file; fix or unset it")
        return lib
    lib = REPO_ROOT / "build" / _defaults.PLUGIN_LIBRARY
    return lib if lib.is_file() else None


_LOADED_PLUGINS: dict[str, Path] = {}  # sha256 → path: a library registers its creators once per process


def load_plugin_library(path: Path) -> str:
    """Load a self-registering plugin library (RTLD_GLOBAL) once per content; returns its sha256.

    A copy of an already loaded library (the bundle's, after a build from build/) is not loaded
    again: its static registrars would register the same creators twice.
    """
    from ..models.weights import file_sha256

    digest = file_sha256(path)
    if digest not in _LOADED_PLUGINS:
        import tensorrt  # noqa: F401  (libnvinfer first: the library registers with its plugin registry)

        try:
            ctypes.CDLL(str(Path(path).resolve()), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:  # missing CUDA/TensorRT libraries, wrong architecture, ...
            raise TokcompileError(f"cannot load plugin library '{path}': {exc}") from None
        _LOADED_PLUGINS[digest] = Path(path)
        logger.debug("loaded TensorRT plugin library %s (sha256 %s)", path, digest[:12])
    return digest


# ---------------------------------------------------------------------------------------------
# Optimization profiles


def token_inputs(stage: Mapping[str, Any]) -> list[str]:
    """Inputs of a stage whose dim 1 is the token dimension that buckets fix: dynamic
    (``token_inputs``) and a token value (``token_values``). Other dynamic inputs (AdaViT's
    heads / MLP rows) are not token inputs."""
    tokens = set(stage.get("token_values") or [])
    dynamic = set(stage.get("token_inputs") or [])
    pairs = zip(stage["inputs"], stage.get("values_in") or stage["inputs"])
    return [name for name, value in pairs if name in dynamic and (value in tokens or name in tokens)]


def stage_buckets(stages: Sequence[Mapping[str, Any]], index: int) -> list[int]:
    """Token counts the runtime feeds stage ``index``: the buckets of the boundary that produced its
    token inputs (``stages[j]["buckets"]``, chosen by calibration for the stage ending in a count).
    Empty when the stage has no token inputs or they come from different boundaries (then only
    the catch-all profile serves it)."""
    stage = stages[index]
    names = set(token_inputs(stage))
    producers: set[int] = set()
    for name, value in zip(stage["inputs"], stage.get("values_in") or stage["inputs"]):
        if name in names:
            # -1: not produced by an earlier stage (a model input)
            producers.add(next((j for j in range(index) if value in stages[j]["outputs"]), -1))
    if len(producers) != 1 or -1 in producers:
        return []
    producer = stages[producers.pop()]
    return [int(b) for b in producer.get("buckets") or []] if producer.get("count") else []


def extra_dim_inputs(stages: Sequence[Mapping[str, Any]], index: int) -> dict[str, int]:
    """Inputs of stage ``index`` whose dim 1 is an extra data-dependent dim an earlier boundary
    cut to the batch's maximum (AdaViT's kept heads, MLP rows) → that dim's full size."""
    full = {v: int(d["max"]) for s in stages[:index] for d in s.get("extra_dims") or [] for v in d["values"]}
    stage = stages[index]
    return {n: full[v] for n, v in zip(stage["inputs"], stage.get("values_in") or stage["inputs"]) if v in full}


def stage_profiles(
    input_shapes: Mapping[str, Sequence[int]],
    tokens_of: Sequence[str],
    buckets: Sequence[int],
    full_count: int,
    max_batch: int,
    opt_batch: int,
    extra: Optional[Mapping[str, int]] = None,
) -> list[dict[str, Any]]:
    """Optimization profiles of one stage, in engine order: one per bucket, then the catch-all.

    input_shapes: input name → dims with -1 where dynamic; dim 0 is the batch, dim 1 of
    ``tokens_of`` the token count. Per bucket b: token dim min = opt = max = b. The catch-all
    takes token counts [FALLBACK_MIN_TOKENS, full_count] (a count above every bucket runs at its
    own size). ``extra``: inputs whose dim 1 is another data-dependent dim (not bucketed) → its
    full size; every profile takes it over [1, full size]. Every profile takes batch
    [1, max_batch], optimised for ``opt_batch``. A stage without token inputs has the catch-all
    only. Returns ``[{"bucket": b or "fallback", "shapes": {name: [min, opt, max]}}]`` (lists,
    for the manifest).
    """
    extra = extra or {}
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch}, {max_batch}")
    missing = [n for n in tokens_of if n not in input_shapes]
    if missing:
        raise ValueError(f"token inputs {missing} are not inputs of the network ({list(input_shapes)})")

    def shapes(tokens: Optional[tuple[int, int, int]]) -> dict[str, list[list[int]]]:
        out = {}
        for name, dims in input_shapes.items():
            dims = [int(d) for d in dims]
            token = tokens if name in tokens_of else (1, extra[name], extra[name]) if name in extra else None
            if len(dims) < (2 if token else 1):
                raise ValueError(f"input '{name}' has shape {dims}: no batch/token dimension")
            triple = []
            for i, batch in enumerate((1, opt_batch, max_batch)):
                shape = [batch, *dims[1:]]
                if token:
                    shape[1] = token[i]
                if any(d < 0 for d in shape):
                    raise ValueError(f"input '{name}' has dynamic dimensions beyond batch and tokens: {dims}")
                triple.append(shape)
            out[name] = triple
        return out

    profiles: list[dict[str, Any]] = []
    if tokens_of:
        for b in sorted({int(b) for b in buckets if 1 <= int(b) <= full_count}):
            profiles.append({"bucket": b, "shapes": shapes((b, b, b))})
    low = min(_defaults.TRT_FALLBACK_MIN_TOKENS, full_count)
    profiles.append({"bucket": FALLBACK, "shapes": shapes((low, full_count, full_count))})
    return profiles


def onnx_input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Graph input name → dims of an ONNX file, -1 where symbolic (as TensorRT's parser sees them)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
    }


def plan_profiles(directory: Path, stages: list[dict[str, Any]], full_count: int) -> None:
    """Record in each stage (``tensorrt_plan``) the profiles ``--backend tensorrt`` would build from
    its ONNX file, without TensorRT: report.md turns them into trtexec/polygraphy commands, so a
    bundle built on a CPU can be lowered on the GPU machine it deploys to."""
    max_batch = _defaults.TRT_MAX_BATCH
    for k, stage in enumerate(stages):
        stage["tensorrt_plan"] = stage_profiles(
            onnx_input_shapes(directory / stage["file"]),
            token_inputs(stage),
            stage_buckets(stages, k),
            full_count,
            max_batch,
            min(_defaults.BUCKET_BATCH, max_batch),
            extra_dim_inputs(stages, k),
        )


def pick_profile(profiles: Sequence[Mapping[str, Any]], tokens: Optional[int]) -> int:
    """Index of the profile built for exactly ``tokens`` tokens, else of the catch-all."""
    for i, p in enumerate(profiles):
        if tokens is not None and p["bucket"] == tokens:
            return i
    return next(i for i, p in enumerate(profiles) if p["bucket"] == FALLBACK)


# ---------------------------------------------------------------------------------------------
# Build


def engine_from_onnx(
    onnx_path: Path,
    engine_path: Path,
    tokens_of: Sequence[str],
    buckets: Sequence[int],
    full_count: int,
    max_batch: int,
    opt_batch: int,
    timing_cache: Path,
    extra: Optional[Mapping[str, int]] = None,
) -> dict[str, Any]:
    """Build ``engine_path`` from ``onnx_path`` (strongly typed; plugins must be loaded already).

    Returns the stage's manifest facts: ``tensorrt_profiles`` and ``tensorrt_plugin_layers``.
    """
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    try:
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)()
        input_shapes = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            input_shapes[tensor.name] = tuple(tensor.shape)
        plugin_layers = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in (trt.LayerType.PLUGIN_V2, trt.LayerType.PLUGIN_V3):
                plugin_layers += 1
        try:
            profiles = stage_profiles(input_shapes, tokens_of, buckets, full_count, max_batch, opt_batch, extra)
        except ValueError as exc:
            raise TokcompileError(
                f"{onnx_path.name}: {exc}; the TensorRT backend builds profiles over batch, token counts and the "
                "extra dims the manifest records; use --backend onnxruntime for this graph"
            ) from None
        polygraphy_profiles = []
        for p in profiles:
            profile = Profile()
            for name, (lo, opt, hi) in p["shapes"].items():
                profile.add(name, min=tuple(lo), opt=tuple(opt), max=tuple(hi))
            polygraphy_profiles.append(profile)
        config = CreateConfig(profiles=polygraphy_profiles, load_timing_cache=str(timing_cache))
        engine_bytes = EngineBytesFromNetwork(
            (builder, network, parser), config=config, save_timing_cache=str(timing_cache)
        )()
    except PolygraphyException as exc:
        raise RuntimeError(f"TensorRT could not build {onnx_path.name}: {exc}") from exc
    with open(engine_path, "wb") as f:
        f.write(engine_bytes)
    return {"tensorrt_profiles": profiles, "tensorrt_plugin_layers": int(plugin_layers)}


def build(
    directory: Path,
    stages: list[dict[str, Any]],
    full_count: int,
    plugin_lib: Optional[Path] = None,
    timing_cache: Optional[str | Path] = None,
    max_batch: Optional[int] = None,
) -> tuple[list[str], dict[str, Any]]:
    """One engine per stage ONNX file in ``directory``; fills each stage's ``tensorrt_file``,
    ``tensorrt_profiles`` and ``tensorrt_plugin_layers``.

    full_count: the model's token count (the catch-all profile's maximum). Returns the files
    written (engines, and the plugin library when a stage uses one of its plugins) and the
    manifest's ``tensorrt`` block. Call ``available()`` first.
    """
    gpu = gpu_info()
    if gpu is None:
        raise TokcompileError("--backend tensorrt needs a CUDA GPU and none is visible; use --backend onnxruntime")
    version = trt_version()
    max_batch = max_batch or _defaults.TRT_MAX_BATCH
    if max_batch < 1:
        raise TokcompileError(f"--max-batch must be ≥ 1, got {max_batch}")
    opt_batch = min(_defaults.BUCKET_BATCH, max_batch)
    cache = Path(timing_cache).expanduser() if timing_cache is not None else default_timing_cache(gpu, version)
    cache.parent.mkdir(parents=True, exist_ok=True)
    needs_plugins = {k: s.get("plugin_nodes") or {} for k, s in enumerate(stages) if s.get("plugin_nodes")}
    if needs_plugins and plugin_lib is None:
        ops = sorted({op for nodes in needs_plugins.values() for op in nodes})
        raise TokcompileError(
            f"the graph routes {', '.join(ops)} to TensorRT plugins but no plugin library was found: build the "
            f"plugins with cmake (README: TensorRT) and pass --plugin-lib PATH or set ${_defaults.PLUGIN_LIB_ENV}"
        )
    digest = load_plugin_library(plugin_lib) if plugin_lib is not None else None
    files = []
    for k, stage in enumerate(stages):
        name = engine_file_name(Path(stage["file"]).stem, version, gpu["compute_capability"])
        start = time.perf_counter()
        facts = engine_from_onnx(
            directory / stage["file"],
            directory / name,
            token_inputs(stage),
            stage_buckets(stages, k),
            full_count,
            max_batch,
            opt_batch,
            cache,
            extra_dim_inputs(stages, k),
        )
        wanted = sum(needs_plugins.get(k, {}).values())
        if facts["tensorrt_plugin_layers"] < wanted:
            raise TokcompileError(
                f"{stage['file']} has {wanted} plugin node(s) ({', '.join(needs_plugins[k])}) but TensorRT made "
                f"{facts['tensorrt_plugin_layers']} plugin layer(s): '{plugin_lib}' does not register them "
                f"(namespace {_defaults.PLUGIN_NAMESPACE}, version {_defaults.PLUGIN_VERSION})"
            )
        stage["tensorrt_file"] = name
        stage.update(facts)
        files.append(name)
        buckets = [p["bucket"] for p in facts["tensorrt_profiles"]]
        logger.info(
            "tensorrt: %s → %s, profiles %s, %d plugin layer(s), %.1f s",
            stage["file"],
            name,
            buckets,
            facts["tensorrt_plugin_layers"],
            time.perf_counter() - start,
        )
    block: dict[str, Any] = {
        "version": version,
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "plugin_library": None,
    }
    if plugin_lib is not None and any(s["tensorrt_plugin_layers"] for s in stages):
        shutil.copy2(plugin_lib, directory / plugin_lib.name)
        files.append(plugin_lib.name)
        block["plugin_library"] = {"file": plugin_lib.name, "sha256": digest}
    elif plugin_lib is not None:
        logger.info(
            "tensorrt: no stage uses a plugin of %s (all native layers); not copied into the bundle", plugin_lib
        )
    logger.info("tensorrt: timing cache %s", cache)
    return files, block


# ---------------------------------------------------------------------------------------------
# Run


def torch_dtype(trt_dtype: Any) -> Any:
    """trt.DataType (or its member name) → torch dtype."""
    import torch

    name = getattr(trt_dtype, "name", trt_dtype)
    if name not in TRT_TO_TORCH:
        raise TokcompileError(f"TensorRT I/O type {name} is not supported by tokcompile's runner")
    return getattr(torch, TRT_TO_TORCH[name])


def to_numpy(buffer: Any) -> np.ndarray:
    """A torch tensor (any device) → numpy; bfloat16 comes back as float32 (numpy has no bf16)."""
    import torch

    if buffer.dtype == torch.bfloat16:
        buffer = buffer.float()
    return buffer.cpu().numpy()


_STATE: dict[str, Any] = {}  # the TensorRT logger and runtime, created once per process


def _runtime() -> Any:
    import tensorrt as trt

    if "runtime" not in _STATE:
        trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(trt_logger)
        _STATE.update(logger=trt_logger, runtime=runtime)  # the logger must outlive the runtime
    return _STATE["runtime"]


def prepare(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Check the bundle's TensorRT version and GPU against this machine (first), then load its
    plugin library. Raises TokcompileError with one line when the engines cannot run here."""
    block = manifest.get("tensorrt")
    if not block:
        raise TokcompileError(
            f"bundle '{directory}' has no TensorRT engines (backend {manifest.get('backend')}); "
            f"rebuild it with --backend tensorrt"
        )
    gpu = gpu_info()
    problem = check_compatible(
        block, trt_version(), gpu["compute_capability"] if gpu else "no GPU", rebuild_command(manifest, directory)
    )
    if problem is not None:
        raise TokcompileError(problem)
    lib = block.get("plugin_library")
    if lib:
        load_plugin_library(Path(directory) / lib["file"])


def load_engine(directory: Path, stage: Mapping[str, Any], manifest: Mapping[str, Any]) -> Any:
    """The deserialized ICudaEngine of one stage (after ``prepare``'s checks)."""
    prepare(directory, manifest)
    runtime = _runtime()
    path = Path(directory) / stage["tensorrt_file"]
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise TokcompileError(f"TensorRT could not deserialize '{path}' (see its log above); rebuild the bundle")
    return engine


class TrtStage:
    """One stage engine as a StageCall: ``call(output_names, feed) → outputs`` (numpy in and out)."""

    def __init__(self, engine: Any, profiles: Sequence[Mapping[str, Any]], tokens_of: Sequence[str], stream: Any):
        import tensorrt as trt

        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        if engine.num_optimization_profiles != len(profiles):
            raise RuntimeError(
                f"engine has {engine.num_optimization_profiles} optimization profiles, the manifest {len(profiles)}"
            )
        self.profiles = list(profiles)
        self.token_inputs = [n for n in tokens_of if n in self.inputs]
        # [min, opt, max] dims of the first input per profile, from the engine itself
        self.max_batch = [
            int(engine.get_tensor_profile_shape(self.inputs[0], i)[2][0]) for i in range(len(self.profiles))
        ]
        self.stream = stream
        self.active: Optional[int] = None

    def __call__(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        tokens = int(feed[self.token_inputs[0]].shape[1]) if self.token_inputs else None
        index = pick_profile(self.profiles, tokens)
        batch = int(feed[self.inputs[0]].shape[0])
        if batch > self.max_batch[index]:
            raise TokcompileError(
                f"batch {batch} is above the engines' maximum {self.max_batch[index]}; run smaller batches "
                f"or rebuild with --max-batch {batch}"
            )
        device = torch.device("cuda", torch.cuda.current_device())
        handle = self.stream.cuda_stream
        buffers = {}
        with torch.cuda.stream(self.stream):
            if index != self.active:
                if not self.context.set_optimization_profile_async(index, handle):
                    raise RuntimeError(f"TensorRT refused optimization profile {index}")
                self.active = index
            for name in self.inputs:
                host = np.require(feed[name], requirements=["C", "W"])
                buffer = torch.from_numpy(host).to(device).to(self.dtypes[name])
                if not self.context.set_input_shape(name, tuple(buffer.shape)):
                    raise RuntimeError(f"TensorRT refused shape {tuple(buffer.shape)} for '{name}' (profile {index})")
                self.context.set_tensor_address(name, buffer.data_ptr())
                buffers[name] = buffer
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"output '{name}' has a data-dependent shape {shape}; not supported")
                buffer = torch.empty(shape, dtype=self.dtypes[name], device=device)
                self.context.set_tensor_address(name, buffer.data_ptr())
                buffers[name] = buffer
            if not self.context.execute_async_v3(handle):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
            results = [to_numpy(buffers[n]) for n in output_names]
        self.stream.synchronize()
        return results


def trt_stage_calls(directory: Path, stages: list[dict[str, Any]], manifest: Mapping[str, Any]) -> list[StageCall]:
    """One TrtStage per stage engine, sharing one CUDA stream (stages run one after another)."""
    import torch

    reason = available(torch_cuda=True)
    if reason is not None:
        raise TokcompileError(
            f"bundle '{directory}' was built for TensorRT, which cannot run here ({reason}); "
            "load it with backend='onnxruntime' to run its ONNX files"
        )
    engines = [load_engine(directory, s, manifest) for s in stages]
    stream = torch.cuda.Stream()
    return [TrtStage(e, s["tensorrt_profiles"], token_inputs(s), stream) for e, s in zip(engines, stages)]
