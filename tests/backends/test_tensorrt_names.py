"""The TensorRT and Polygraphy names tokcompile's TensorRT backend uses exist, checked without a GPU.

``backends/tensorrt.py`` declares every attribute it reads from a TensorRT object in
``RUNTIME_API`` (runtime side) or ``BUILD_API`` (builder side). These tests parse that file and
fail on an access the lists do not declare, then look the runtime names up in the
``tensorrt_lean`` wheel (the lean runtime: Runtime, ICudaEngine, IExecutionContext, ... without
the builder; installed by the ``dev`` extra) and the builder names in ``tensorrt`` where it is
installed. A new TensorRT call in the runner therefore fails here unless it exists.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tokcompile.backends import tensorrt as trt_backend


def used_names() -> set[str]:
    """Every maximal attribute chain rooted at a name of API_ROOTS (or ``self.<root>``), in the
    declared form: ``context.set_input_shape`` → "IExecutionContext.set_input_shape",
    ``trt.TensorIOMode.INPUT`` → "TensorIOMode.INPUT"."""
    tree = ast.parse(Path(trt_backend.__file__).read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    roots = trt_backend.API_ROOTS
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
            continue
        attrs, base = [], node
        while isinstance(base, ast.Attribute):
            attrs.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name):
            continue
        if base.id == "self" and attrs and attrs[0] in roots:
            root, attrs = attrs[0], attrs[1:]
        elif base.id in roots:
            root = base.id
        else:
            continue
        if attrs:
            found.add(".".join([roots[root], *attrs]) if roots[root] else ".".join(attrs))
    return found


def resolve(module: object, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_every_tensorrt_access_is_declared():
    used = used_names()
    assert "IExecutionContext.execute_async_v3" in used and "Runtime.deserialize_cuda_engine" in used  # parser works
    undeclared = used - set(trt_backend.RUNTIME_API) - set(trt_backend.BUILD_API)
    assert not undeclared, f"add these to RUNTIME_API or BUILD_API in backends/tensorrt.py: {sorted(undeclared)}"
    runtime_owners = {trt_backend.API_ROOTS[r] for r in ("runtime", "engine", "context")}
    misfiled = [n for n in used & set(trt_backend.BUILD_API) if n.split(".")[0] in runtime_owners]
    assert not misfiled
    # and no stale declarations (DataType members are reached through the TRT_TO_TORCH names)
    stale = set(trt_backend.RUNTIME_API) - used - {f"DataType.{n}" for n in trt_backend.TRT_TO_TORCH}
    assert not stale | (set(trt_backend.BUILD_API) - used)


def test_runtime_names_exist_in_tensorrt_lean():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt-lean-cu13 is not installed (pip install -e '.[dev]')")
    missing = [n for n in trt_backend.RUNTIME_API if not resolve(trt, n)]
    assert not missing, f"not in tensorrt_lean {trt.__version__}: {missing}"
    # the members the runner compares against and maps to torch
    assert trt.TensorIOMode.INPUT.name == "INPUT"
    assert set(trt_backend.TRT_TO_TORCH) <= set(trt.DataType.__members__)


def test_dtype_mapping_from_lean_enum():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt-lean-cu13 is not installed (pip install -e '.[dev]')")
    import torch

    assert trt_backend.torch_dtype(trt.DataType.HALF) == torch.float16
    assert trt_backend.torch_dtype(trt.DataType.BF16) == torch.bfloat16
    assert trt_backend.torch_dtype(trt.DataType.INT64) == torch.int64
    assert trt_backend.torch_dtype(trt.DataType.BOOL) == torch.bool


def test_build_names_exist_in_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="the TensorRT builder (tensorrt package) is not installed")
    missing = [n for n in trt_backend.BUILD_API + trt_backend.RUNTIME_API if not resolve(trt, n)]
    assert not missing, f"not in tensorrt {trt.__version__}: {missing}"


def test_polygraphy_loaders_take_the_arguments_used():
    """Constructing the loaders touches no TensorRT; wrong keyword names raise TypeError here."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile, TrtRunner

    network = NetworkFromOnnxPath("stage1.onnx", strongly_typed=True)
    assert network.strongly_typed is True
    profile = Profile().add("x", min=(1, 40, 64), opt=(16, 40, 64), max=(64, 40, 64))
    assert tuple(profile["x"].max) == (64, 40, 64)
    config = CreateConfig(profiles=[profile], load_timing_cache="timing.cache")
    EngineBytesFromNetwork((None, None, None), config=config, save_timing_cache="timing.cache")
    assert {"engine", "name"} <= set(inspect.signature(TrtRunner.__init__).parameters)
