"""ONNX export of ToMe GraphModules and a ToMe bundle end to end.

test_vit (6 blocks, 101 tokens) with r = 13: one TomeMerge node per block calling one
model-local function, no ScatterElements with a reduction anywhere, a symbolic batch, and ONNX
Runtime (CPU) equal to the GraphModule. Then ``tokcompile.build`` → ``load`` → ``compare`` on
test_vit. Two exports in all (~5 s each on 2 CPU cores); ToMe's numerics on DeiT-T (12 blocks,
197 tokens) against the eager reference: tests/passes/test_tome_passes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from exported import Exported

import tokcompile
from tokcompile.export.onnx import INPUT_NAME, onnx_from_graph_module
from tokcompile.methods import get_method
from tokcompile.methods import tome as tome_method
from tokcompile.models.tracing import capture
from tokcompile.passes.graph_outputs import named_outputs as output_names
from tokcompile.passes.manager import PassContext, run_passes
from tokcompile.verify.compare import compare

LOGITS_ATOL = 1e-4  # fp32, ORT CPU vs the GraphModule
DEPTH = 6  # test_vit's blocks: ToMe merges in every one


@pytest.fixture(scope="module")
def tv_tome(models, tmp_path_factory) -> Exported:
    model, spec = models("test_vit")
    config = tome_method.TomeConfig.resolve(spec, r=13)
    ctx = PassContext(spec, config, layers=config.layers, debug=True)
    gm = run_passes(capture(model), get_method("tome").pipeline, ctx).graph_module
    path = tmp_path_factory.mktemp("onnx_tome") / "m.onnx"
    facts = onnx_from_graph_module(gm, spec.input_shape, path, output_names(gm))
    return Exported(gm, ctx, path, facts, onnx.load(str(path)))


def _attrs(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    def walk(nodes):
        for node in nodes:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g.node)
                for g in attr.graphs:
                    yield from walk(g.node)

    yield from walk(model.graph.node)
    for fn in model.functions:
        yield from walk(fn.node)


def test_one_tome_merge_node_per_block(tv_tome: Exported) -> None:
    nodes = tv_tome.nodes("TomeMerge")
    assert len(nodes) == DEPTH and all(n.domain == "tokcompile" for n in nodes)
    assert tv_tome.facts["custom_nodes"] == ["TomeMerge"]
    assert tv_tome.facts["outputs"] == ["logits"] + [f"merge_map_{i}" for i in range(DEPTH)]
    assert [a["r"] for a in map(_attrs, nodes)] == [13] * DEPTH
    for a in map(_attrs, nodes):
        # TomeMerge has no TensorRT plugin: never plugin attributes, TensorRT always inlines the body.
        assert a == {"r": 13, "num_prefix": 1}
    assert tv_tome.facts["plugin_nodes"] == {} and tv_tome.facts["native_nodes"] == {"TomeMerge": DEPTH}
    functions = [f for f in tv_tome.model.functions if f.domain == "tokcompile"]
    assert [f.name for f in functions] == ["TomeMerge"]
    opsets = {o.domain: o.version for o in tv_tome.model.opset_import}
    assert opsets.get("tokcompile") == 1


def test_no_scatter_with_reduction(tv_tome: Exported) -> None:
    """TensorRT's parser needs its plugin library for ScatterElements/ScatterND with a reduction
    (onnx-tensorrt 10.10 ``onnxOpImporters.cpp`` ScatterElements: reduction != "none" goes to
    ``scatterPluginHelper``); the body is lowered natively (TomeMerge has no plugin of ours), so
    it must not use one."""
    for node in _all_nodes(tv_tome.model):
        if node.op_type in ("ScatterElements", "ScatterND"):
            assert _attrs(node).get("reduction", "none") == "none", node


def test_checker_and_symbolic_batch(tv_tome: Exported) -> None:
    onnx.checker.check_model(tv_tome.model, full_check=True)
    (inp,) = tv_tome.model.graph.input
    assert inp.name == INPUT_NAME
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 160, 160]
    for out in tv_tome.model.graph.output[1:]:
        odims = out.type.tensor_type.shape.dim
        assert odims[0].dim_param and odims[1].dim_value == 101


def test_onnxruntime_matches_graph_module(tv_tome: Exported) -> None:
    x = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(3))  # batch 3: not the traced 2
    session = ort.InferenceSession(str(tv_tome.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        expected = tv_tome.gm(x)
    assert len(got) == len(expected) == 1 + DEPTH
    err = float(np.abs(got[0] - expected[0].numpy()).max())
    assert err <= LOGITS_ATOL, f"logits max abs error {err:.2e} > {LOGITS_ATOL}"
    for name, ours, theirs in zip(output_names(tv_tome.gm)[1:], got[1:], expected[1:], strict=True):
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=name)


@pytest.fixture(scope="module")
def tome_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tv-tome"
    tokcompile.build("test_vit", method="tome", weights="random", output=out, r=8)
    return out


def test_build_load_compare(tome_bundle: Path) -> None:
    manifest = tokcompile.load(tome_bundle).manifest
    assert manifest.method.name == "tome"
    assert manifest.method.params == {"r": [8] * 6, "layers": list(range(6)), "prop_attn": True}
    assert manifest.tokens.sequence == [101, 93, 85, 77, 69, 61, 53]
    assert manifest.stages[0].custom_nodes == ["TomeMerge"]
    runner = tokcompile.load(tome_bundle)
    images = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    outputs = runner.run(images)
    assert outputs["logits"].shape == (2, 1000) and runner(images).shape == (2, 1000)
    assert [n for n in outputs if n.startswith("merge_map_")] == [f"merge_map_{i}" for i in range(6)]
    report = compare(tome_bundle, batch=2, samples=1)
    assert report.passed, report.lines()
    assert set(report.layer_agreement) == {f"merge_map_{i}" for i in range(6)}
    assert all(rate == 1.0 for rate in report.layer_agreement.values()), report.lines()
    assert any(line.startswith("merge_map_5: identical token groupings for 100.0%") for line in report.lines())


def test_compare_reads_merge_maps_as_partitions(tome_bundle: Path, monkeypatch) -> None:
    """Relabelled groups still agree; a token moved to another group is a flip in that layer only."""
    import tokcompile.runtime.reference as api

    real = api.rebuild

    def altered(*args, **kwargs):
        gm, spec, info = real(*args, **kwargs)
        names = info["outputs"]
        relabel, moved = names.index("merge_map_2"), names.index("merge_map_4")

        def forward(x, _gm=gm):
            out = list(_gm(x))
            out[relabel] = out[relabel].max() - out[relabel]  # same groups, other labels
            out[moved] = out[moved].clone()
            out[moved][0, 1] = out[moved][0, 0]  # image 0: patch 1 joins the CLS token's group
            return tuple(out)

        return forward, spec, info

    monkeypatch.setattr(api, "rebuild", altered)
    report = compare(tome_bundle, batch=2, samples=1)
    assert report.layer_agreement["merge_map_2"] == 1.0 and report.layer_overlap["merge_map_2"] == 1.0
    assert report.layer_agreement["merge_map_4"] == 0.5
    assert 0.9 < report.layer_overlap["merge_map_4"] < 1.0
    assert any(line.startswith("merge_map_4:") and "selection flips" in line for line in report.lines())
