"""Every TensorRT name the TensorRT backends use exists, checked without a GPU.

The tests parse the files of ``tokcompile/backends/tensorrt/`` and collect every attribute read
from a variable that holds a TensorRT object (ROOTS), then fail on one the lists below do not
declare, and look each list up in the installed wheels:

- RUNTIME_API (both flavours' runner) in ``tensorrt_lean`` (the lean TensorRT runtime, 45 MB,
  no GPU needed to import) and ``tensorrt_rtx``;
- RTX_RUNTIME_API (TensorRT for RTX's JIT runtime cache) in ``tensorrt_rtx``;
- BUILD_API (the shared builder path of build.py and the TensorRT timing cache) in
  ``tensorrt_rtx``, whose builder and parser are TensorRT's API, and in ``tensorrt`` where installed;
- RTX_BUILD_API (compute-capability targets; the legacy plugin layer type, which build.py reads only
  where the module has it) in ``tensorrt_rtx``.

Both wheels are in the ``dev`` extra, so a new TensorRT call in either flavour fails here unless
it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokcompile.backends.tensorrt import run

PACKAGE = Path(run.__file__).parent

# Variable names that hold TensorRT objects in the backend files → their class ("" = the module).
ROOTS = {
    "trt": "",
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "error": "ParserError",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "layer": "ILayer",
    "tensor": "ITensor",
    "timing_cache": "ITimingCache",
    "trt_runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "runtime_config": "IRuntimeConfig",
    "runtime_cache": "IRuntimeCache",
}
RUNTIME_API = (
    "__name__",
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
    *(f"DataType.{name}" for name in run.TRT_TO_TORCH),
)
RTX_RUNTIME_API = (
    "ICudaEngine.create_runtime_config",
    "IRuntimeConfig.create_runtime_cache",
    "IRuntimeConfig.set_runtime_cache",
    "IRuntimeCache.deserialize",
    "IRuntimeCache.serialize",
)
BUILD_API = (
    "ILogger",
    "ILogger.__init__",
    "ILogger.Severity.INTERNAL_ERROR",
    "ILogger.Severity.ERROR",
    "ILogger.Severity.WARNING",
    "Builder",
    "Builder.create_network",
    "Builder.create_builder_config",
    "Builder.create_optimization_profile",
    "Builder.build_serialized_network",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "OnnxParser",
    "OnnxParser.parse_from_file",
    "OnnxParser.num_errors",
    "OnnxParser.get_error",
    "ParserError.desc",
    "ParserError.node_name",
    "ParserError.node_operator",
    "INetworkDefinition.num_inputs",
    "INetworkDefinition.get_input",
    "INetworkDefinition.num_layers",
    "INetworkDefinition.get_layer",
    "ILayer.type",
    "ITensor.name",
    "ITensor.shape",
    "LayerType",
    "LayerType.PLUGIN_V2",
    "LayerType.PLUGIN_V3",
    "BuilderFlag.TF32",
    "IBuilderConfig.set_flag",
    "IBuilderConfig.clear_flag",
    "IBuilderConfig.get_flag",
    "IBuilderConfig.add_optimization_profile",
    "IOptimizationProfile.set_shape",
    "IOptimizationProfile.get_shape",
    "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache",
    "IBuilderConfig.get_timing_cache",
    "ITimingCache.serialize",
)
RTX_BUILD_API = (
    "ComputeCapability",
    "ComputeCapability.__members__",
    "IBuilderConfig.num_compute_capabilities",
    "IBuilderConfig.set_compute_capability",
    "LayerType.PLUGIN",  # the legacy plugin layer type; build.py counts it only where it exists
)
DECLARED = (*RUNTIME_API, *RTX_RUNTIME_API, *BUILD_API, *RTX_BUILD_API)


def used_names() -> dict[str, set[str]]:
    """File name → every maximal attribute chain rooted at a name of ROOTS (or ``<obj>.<root>``,
    e.g. ``self.context``, ``parsed.builder``), in the declared form: ``context.set_input_shape``
    → "IExecutionContext.set_input_shape", ``trt.TensorIOMode.INPUT`` → "TensorIOMode.INPUT"."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        names = found.setdefault(path.name, set())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
                continue
            attrs, base = [], node
            while isinstance(base, ast.Attribute):
                attrs.insert(0, base.attr)
                base = base.value
            if not isinstance(base, ast.Name):
                continue
            if base.id in ROOTS:
                root = base.id
            elif attrs and attrs[0] in ROOTS and base.id != "trt":
                root, attrs = attrs[0], attrs[1:]
            else:
                continue
            if attrs:
                names.add(".".join([ROOTS[root], *attrs]) if ROOTS[root] else ".".join(attrs))
    return found


def resolve(module: object, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_every_tensorrt_access_is_declared():
    per_file = used_names()
    used = set().union(*per_file.values())
    # the parser sees both sides
    assert {"IExecutionContext.execute_async_v3", "Runtime.deserialize_cuda_engine"} <= used
    assert {"Builder.build_serialized_network", "IBuilderConfig.set_compute_capability"} <= used
    undeclared = used - set(DECLARED)
    assert not undeclared, f"declare these in tests/backends/test_tensorrt_names.py: {sorted(undeclared)}"
    # the runner (run.py) makes no builder call: it must run on the lean runtime
    runner_build = per_file["run.py"] & set(BUILD_API + RTX_BUILD_API)
    assert not runner_build
    # and no stale declarations (DataType members are reached through the TRT_TO_TORCH names)
    stale = set(DECLARED) - used - {f"DataType.{n}" for n in run.TRT_TO_TORCH}
    assert not stale, sorted(stale)


def _lookup(module_name: str, reason: str, names: tuple[str, ...]) -> None:
    trt = pytest.importorskip(module_name, reason=reason)
    missing = [n for n in names if not resolve(trt, n)]
    assert not missing, f"not in {module_name} {trt.__version__}: {missing}"


def test_runtime_names_exist_in_tensorrt_lean():
    _lookup("tensorrt_lean", "tensorrt-lean-cu13 is not installed (pip install -e '.[dev]')", RUNTIME_API)
    import tensorrt_lean as trt

    assert trt.TensorIOMode.INPUT.name == "INPUT"  # what the runner compares against
    assert set(run.TRT_TO_TORCH) <= set(trt.DataType.__members__)


def test_names_exist_in_tensorrt_rtx():
    reason = "tensorrt-rtx-cu13 is not installed (pip install -e '.[dev]')"
    _lookup("tensorrt_rtx", reason, RUNTIME_API + RTX_RUNTIME_API + BUILD_API + RTX_BUILD_API)


def test_dtype_mapping_from_lean_enum():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt-lean-cu13 is not installed (pip install -e '.[dev]')")
    import torch

    assert run.torch_dtype(trt.DataType.HALF) == torch.float16
    assert run.torch_dtype(trt.DataType.BF16) == torch.bfloat16
    assert run.torch_dtype(trt.DataType.INT64) == torch.int64
    assert run.torch_dtype(trt.DataType.BOOL) == torch.bool


def test_build_names_exist_in_tensorrt():
    _lookup("tensorrt", "the TensorRT builder (tensorrt package) is not installed", RUNTIME_API + BUILD_API)
