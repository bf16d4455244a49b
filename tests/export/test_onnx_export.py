"""ONNX export of EViT GraphModules: one EvitSelect node per layer, a model-local function body,
a symbolic batch, and ONNX Runtime (CPU) numerics equal to the GraphModule.

test_vit (6 blocks, 101 tokens), fused and unfused: each export takes ~5 s on 2 CPU cores, so
this file exports twice in all (module fixtures). EViT's numerics on DeiT-T (12 blocks, 197
tokens) against the eager reference: tests/passes/test_evit_passes.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from exported import Exported

from tokcompile.export.onnx import INPUT_NAME, onnx_from_graph_module
from tokcompile.passes.graph_outputs import named_outputs as output_names

LOGITS_ATOL = 1e-4  # fp32, ORT CPU vs the GraphModule


def _export(evit_gm, tmp_path_factory, name: str, **params) -> Exported:
    gm, ctx = evit_gm(name, **params)
    path = tmp_path_factory.mktemp(f"onnx_{name}") / "m.onnx"
    facts = onnx_from_graph_module(gm, ctx.spec.input_shape, path, output_names(gm))
    return Exported(gm, ctx, path, facts, onnx.load(str(path)))


@pytest.fixture(scope="module")
def fused(evit_gm, tmp_path_factory) -> Exported:
    return _export(evit_gm, tmp_path_factory, "test_vit", keep_rate=0.7, fuse=True)


@pytest.fixture(scope="module")
def test_vit_unfused(evit_gm, tmp_path_factory) -> Exported:
    return _export(evit_gm, tmp_path_factory, "test_vit", fuse=False)


def _attrs(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _run_and_compare(exp: Exported, batch: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, *exp.spec.input_shape, generator=gen)
    session = ort.InferenceSession(str(exp.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == output_names(exp.gm)
    got = session.run(None, {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        expected = exp.gm(x)
    assert len(got) == len(expected) == 1 + len(exp.ctx.layers)
    logits, *kept = got
    err = float(np.abs(logits - expected[0].numpy()).max())
    assert logits.shape == (batch, exp.spec.num_classes)
    assert err <= LOGITS_ATOL, f"logits max abs error {err:.2e} > {LOGITS_ATOL}"
    for name, ours, theirs in zip(output_names(exp.gm)[1:], kept, expected[1:], strict=True):
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=name)


# ----------------------------------------------------------------------------- test_vit, fused


def test_one_evit_select_node_per_layer(fused: Exported) -> None:
    nodes = fused.nodes("EvitSelect")
    assert len(nodes) == 3
    assert all(n.domain == "tokcompile" for n in nodes)
    assert not [n for n in fused.model.graph.node if n.domain not in ("", "ai.onnx", "tokcompile")]
    assert fused.facts["custom_nodes"] == ["EvitSelect"]
    assert fused.facts["outputs"] == ["logits", "kept_ids_2", "kept_ids_3", "kept_ids_4"]
    opsets = {o.domain: o.version for o in fused.model.opset_import}
    assert opsets.get("tokcompile") == 1 and opsets.get("", opsets.get("ai.onnx")) == fused.facts["opset"]


def test_evit_select_attributes(fused: Exported) -> None:
    # 101 tokens → k = ceil(0.7·100) = 70 → 1+70+1 = 72 → k = ceil(0.7·71) = ceil(49.7) = 50
    # → 52 → k = ceil(0.7·51) = ceil(35.7) = 36 → 38.
    attrs = [_attrs(n) for n in fused.nodes("EvitSelect")]
    assert [a["k"] for a in attrs] == [70, 50, 36]
    for a in attrs:
        # --plugins auto (default): EViT's count follows from shapes, so its nodes lower natively
        # (no plugin attributes; tests/export/test_plugins_lowering.py covers on/off).
        assert a == {"k": a["k"], "num_prefix": 1, "fuse": 1}


def test_model_local_function(fused: Exported) -> None:
    functions = [f for f in fused.model.functions if f.name == "EvitSelect"]
    assert len(functions) == 1
    fn = functions[0]
    assert fn.domain == "tokcompile"
    assert {"k", "num_prefix", "fuse"} <= set(fn.attribute) | {a.name for a in fn.attribute_proto}
    assert len(fn.input) == 2 and len(fn.output) == 2
    assert {n.op_type for n in fn.node} >= {"TopK", "GatherND", "Concat"}


def test_passes_full_checker(fused: Exported) -> None:
    onnx.checker.check_model(fused.model, full_check=True)


def test_batch_is_symbolic(fused: Exported) -> None:
    (inp,) = fused.model.graph.input
    assert inp.name == INPUT_NAME
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 160, 160]
    # Output token counts are static: kept_ids_<l> is [batch, k].
    for out, k in zip(fused.model.graph.output[1:], [70, 50, 36], strict=True):
        odims = out.type.tensor_type.shape.dim
        assert odims[0].dim_param and odims[1].dim_value == k


def test_onnxruntime_matches_graph_module(fused: Exported) -> None:
    _run_and_compare(fused, batch=3)  # a batch size the export never saw (it traced 2)


# ----------------------------------------------------------------------------- test_vit, no fusion


def test_test_vit_unfused_export(test_vit_unfused: Exported) -> None:
    exp = test_vit_unfused
    nodes = exp.nodes("EvitSelect")
    assert len(nodes) == len(exp.ctx.layers) == 3
    # 101 → ceil(0.7·100) = 70 → 71 → ceil(0.7·70) = 49 → 50 → ceil(0.7·49) = ceil(34.3) = 35 → 36
    assert [_attrs(n)["k"] for n in nodes] == [70, 49, 35]
    assert all(_attrs(n)["fuse"] == 0 for n in nodes)
    onnx.checker.check_model(exp.model, full_check=True)
    _run_and_compare(exp, batch=3)
