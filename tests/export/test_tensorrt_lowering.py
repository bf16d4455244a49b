"""Every method's exported ONNX as TensorRT's ONNX parser sees it.

``inline_like_tensorrt`` instantiates each model-local function at each call site the way
onnx-tensorrt's ``LocalFunctionImporter`` does (functions looked up by name alone, the first one
of a name wins; body node and value names kept as they are; body values bound in a scope nested
in the caller's), so the checks below are about the names TensorRT actually registers:

* no value is named ``_`` (TensorRT for RTX's builder rejected two tensors of that name);
* every scope is in SSA form, and no body value is named like a value of the graph it is inlined
  into (a body input so named is not bound to the node's input at all: the parser reads the
  outer tensor, with only a warning);
* node names repeat only between instances of one function called more than once: the parser
  keys local functions by name (IR 10 ``overload`` ignored, checked below against the real
  parser), so instances of one body cannot be told apart, but nothing else may collide.

With TensorRT for RTX installed (``tensorrt_rtx``), every stage of every method is parsed and
built ahead of time for SM80 with exactly its planned profiles, with no plugin layer, and the
parser's duplicate-name warnings are exactly those predicted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bundle_fixtures import RTX_BUCKETS
from onnx import TensorProto, helper

from tokcompile.backends import get_backend
from tokcompile.backends.base import BuildOptions
from tokcompile.backends.tensorrt.build import EngineBuild, engine_from_onnx
from tokcompile.export.onnx import scoped_function

METHODS = ("none", "evit", "tome", "ats", "avit", "adavit")


@dataclass
class Inlined:
    """Names as the parser registers them, and the rule violations found on the way."""

    node_names: list[str] = field(default_factory=list)  # every instance, in import order
    problems: list[str] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)  # function name → call sites
    owner: dict[str, str] = field(default_factory=dict)  # body node name → its function


def inline_like_tensorrt(model: onnx.ModelProto) -> Inlined:
    functions: dict[str, onnx.FunctionProto] = {}
    for fn in model.functions:
        functions.setdefault(fn.name, fn)
    out = Inlined()
    graph_values = {i.name for i in (*model.graph.input, *model.graph.initializer)}

    def walk(nodes, inputs: set[str], where: str) -> set[str]:
        produced: set[str] = set()
        visible = set(inputs)
        for node in nodes:
            if node.domain not in ("", "ai.onnx") and node.op_type in functions:
                fn = functions[node.op_type]
                out.calls[fn.name] += 1
                for outside, inside in zip(node.input, fn.input):
                    if inside != outside and inside in visible:
                        out.problems.append(f"{where}: {fn.name} input '{inside}' shadows an outer tensor")
                body = walk(fn.node, set(fn.input), f"{where}/{fn.name}")
                for name in sorted(body & visible):
                    out.problems.append(f"{where}: {fn.name} body value '{name}' shadows an outer tensor")
                out.owner.update({n.name: fn.name for n in fn.node})
            out.node_names.append(node.name)
            for value in node.output:
                if value.split("/")[-1] == "_":
                    out.problems.append(f"{where}: a value is named '_' ({node.op_type} {node.name})")
                if value and value in produced | inputs:
                    out.problems.append(f"{where}: value '{value}' is produced twice")
                produced.add(value)
                visible.add(value)
        return produced

    walk(model.graph.node, graph_values, "main")
    return out


def duplicate_node_names(inlined: Inlined) -> set[str]:
    return {name for name, n in Counter(inlined.node_names).items() if n > 1}


def _stage_files(bundle: Path) -> list[tuple[Path, dict]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return [(bundle / s["file"], s) for s in manifest["stages"]]


@pytest.fixture(scope="module")
def bundles(method_bundle) -> dict[str, Path]:
    """The suite's shared test_vit bundle of every method (the names do not depend on buckets)."""
    return {method: method_bundle(method) for method in METHODS}


# ----------------------------------------------------------------------------- names, no TensorRT


@pytest.mark.parametrize("method", METHODS)
def test_names_after_inlining(bundles, method: str) -> None:
    for path, _ in _stage_files(bundles[method]):
        model = onnx.load(str(path))
        inlined = inline_like_tensorrt(model)
        assert not inlined.problems, (path.name, inlined.problems[:5])
        for name in duplicate_node_names(inlined):
            function = inlined.owner.get(name)
            assert function is not None and inlined.calls[function] > 1, (path.name, name)
        onnx.checker.check_model(model, full_check=True)


def test_the_helper_finds_what_the_old_exports_had() -> None:
    """The helper is not vacuous: onnxscript's unscoped body names (n0, n1, ...), a body input
    named like an outer tensor and an unused output named '_' are all reported."""
    body = [
        helper.make_node("Relu", ["x"], ["_"], name="n0"),
        helper.make_node("Neg", ["x"], ["y"], name="n1"),
    ]
    fn = helper.make_function("tok", "F", ["x"], ["y"], body, [helper.make_opsetid("", 18)])
    nodes = [
        helper.make_node("Relu", ["inp"], ["x"], name="n1"),  # main graph value 'x', node 'n1'
        helper.make_node("F", ["inp"], ["a"], domain="tok", name="call0"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, functions=[fn])
    inlined = inline_like_tensorrt(model)
    assert any("named '_'" in p for p in inlined.problems)
    assert any("input 'x' shadows" in p for p in inlined.problems)
    assert duplicate_node_names(inlined) == {"n1"}  # body vs main graph: not a repeated call site
    scoped = model.__class__()
    scoped.CopyFrom(model)
    scoped.functions[0].CopyFrom(scoped_function(fn))
    rescoped = inline_like_tensorrt(scoped)
    assert duplicate_node_names(rescoped) == set() and not any("shadows" in p for p in rescoped.problems)


def test_scoped_function_runs_unchanged_in_onnxruntime() -> None:
    body = [helper.make_node("Add", ["x", "x"], ["t"]), helper.make_node("Mul", ["t", "x"], ["y"])]
    fn = helper.make_function("tok", "F", ["x"], ["y"], body, [helper.make_opsetid("", 18)])
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["y"], domain="tok"), helper.make_node("F", ["y"], ["z"], domain="tok")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("tok", 1)]
    x = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    results = []
    for f in (fn, scoped_function(fn)):
        model = helper.make_model(graph, opset_imports=opsets, functions=[f])
        onnx.checker.check_model(model, full_check=True)
        assert all(n.name.startswith("F/") for n in f.node) == (f is not fn)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results.append(session.run(None, {"x": x})[0])
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], 2 * (2 * x * x) * (2 * x * x))


# ----------------------------------------------------------------------------- TensorRT for RTX


_PARSE_WARNINGS = """
import sys, tensorrt_rtx as trt
class Log(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)
        self.messages = []
    def log(self, severity, msg):
        self.messages.append(msg)
log = Log()
builder = trt.Builder(log)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
assert trt.OnnxParser(network, log).parse_from_file(sys.argv[1])
print("\\n".join(m for m in log.messages if "already exists" in m))
"""
DUPLICATE = re.compile(r"A node named (.+) already exists")


def _parser_duplicates(path: Path) -> list[str]:
    """The parser's duplicate-node-name warnings for one file, in a fresh interpreter (TensorRT
    logs an identical message once per process)."""
    done = subprocess.run(
        [sys.executable, "-c", _PARSE_WARNINGS, str(path)], capture_output=True, text=True, check=True
    )
    return [m.group(1) for m in DUPLICATE.finditer(done.stdout)]


def _build(path: Path, plan: list[dict]) -> EngineBuild:
    """Build ``path`` for SM80 with the planned profiles, the way ``tokcompile build --backend
    tensorrt-rtx`` does (a failure raises EngineBuildError)."""
    trt = pytest.importorskip("tensorrt_rtx")
    backend = get_backend("tensorrt-rtx")
    return engine_from_onnx(trt, backend, path, plan, backend.check_options(BuildOptions(target_sm="80")))


@pytest.mark.trt
@pytest.mark.parametrize("method", METHODS)
def test_every_stage_builds_natively_for_its_planned_profiles(bundles, method: str) -> None:
    pytest.importorskip("tensorrt_rtx")
    for path, stage in _stage_files(bundles[method]):
        built = _build(path, stage["tensorrt_plan"])
        assert built.layers > 0 and built.plugin_layers == 0, path.name  # --plugins auto: no plugin layer
        assert built.engine is not None, f"{method} {path.name}: TensorRT could not build it"


@pytest.mark.trt
@pytest.mark.slow
def test_ats_builds_for_buckets_below_the_sample_count(rtx_bundle) -> None:
    """The old body scattered M picks into n < M slots, which the builder rejects for every bucket
    below M + 1 (M = 101, every token, on test_vit); the fp16 graph feeds the op fp16 values. The
    fp16 ATS bundle of test_tensorrt_rtx_build.py (all profiles in one engine there), each bucket
    built on its own here."""
    pytest.importorskip("tensorrt_rtx")
    path = rtx_bundle("ats", "fp16")
    expected = [int(b) for b in RTX_BUCKETS.split(",")]
    assert max(expected) < 101
    for file, stage in _stage_files(path)[1:-1]:
        buckets = [p["bucket"] for p in stage["tensorrt_plan"]]
        assert buckets[:-1] == expected
        for entry in stage["tensorrt_plan"]:  # one profile at a time: each bucket on its own
            assert _build(file, [entry]).engine is not None, (file.name, entry["bucket"])


@pytest.mark.trt
@pytest.mark.parametrize("method", ["evit", "tome", "ats"])
def test_parser_warns_only_about_repeated_call_sites(bundles, method: str) -> None:
    pytest.importorskip("tensorrt_rtx")
    for path, _ in _stage_files(bundles[method])[:2]:
        inlined = inline_like_tensorrt(onnx.load(str(path)))
        warned = _parser_duplicates(path)
        assert set(warned) <= duplicate_node_names(inlined), (path.name, warned)
        repeated = {f for f, n in inlined.calls.items() if n > 1}
        assert all(inlined.owner[name] in repeated for name in warned)
        if not repeated:
            assert warned == [], path.name


@pytest.mark.trt
def test_parser_ignores_function_overloads(tmp_path) -> None:
    """Why one function per call site cannot give instances their own names: TensorRT for RTX's
    parser takes the first function of a name for every call site, whatever overload it names
    (here it would import call B's body as A's: the second node's layers carry A's names)."""
    trt = pytest.importorskip("tensorrt_rtx")

    def overload(tag: str, c: float) -> onnx.FunctionProto:
        body = [
            helper.make_node("Constant", [], [f"{tag}/c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [c])),
            helper.make_node("Add", ["x", f"{tag}/c"], ["y"], name=f"{tag}/add"),
        ]
        return helper.make_function("tok", "F", ["x"], ["y"], body, [helper.make_opsetid("", 18)], overload=tag)

    graph = helper.make_graph(
        [
            helper.make_node("F", ["inp"], ["a"], domain="tok", overload="A"),
            helper.make_node("F", ["a"], ["b"], domain="tok", overload="B"),
        ],
        "g",
        [helper.make_tensor_value_info("inp", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("tok", 1)],
        functions=[overload("A", 1.0), overload("B", 10.0)],
        ir_version=10,
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"inp": np.zeros((1, 4), np.float32)})[0].tolist() == [[11.0] * 4]  # ORT: A then B
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString())
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    assert not any(name.startswith("B/") for name in names)
    assert sum(name.startswith("A/add") for name in names) == 2
