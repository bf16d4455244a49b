"""output_features: the classifier's input as the second graph output.

Per STYLE.md item 7: the positive rewrite (outputs and nodes before/after), a graph without a
``head`` module that stays unchanged, idempotence, and numerics against timm's own
``forward_head(forward_features(x), pre_logits=True)`` for the three pooling kinds of timm's
test models (CLS token, average, attention pooling "map").
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from pass_helpers import assert_noop, method_graph

from tokcompile.models.tracing import capture
from tokcompile.passes.graph_outputs import named_outputs, output_node
from tokcompile.passes.manager import PassContext, run_passes
from tokcompile.passes.output_features import output_features

POOLS = {"test_vit": "token", "test_vit2": "avg", "test_vit3": "map"}


def run_output_features(models, name: str) -> tuple[fx.GraphModule, fx.GraphModule, PassContext]:
    """(captured graph, the same after output_features, ctx)."""
    model, spec = models(name)
    before = capture(model)
    ctx = PassContext(spec, debug=True)
    after = run_passes(capture(model), (output_features,), ctx)
    ctx.info["modified"] = after.modified
    return before, after.graph_module, ctx


# ----------------------------------------------------------------------------- positive


@pytest.mark.parametrize("name", list(POOLS))
def test_features_become_the_second_output(models, name: str) -> None:
    before, gm, ctx = run_output_features(models, name)
    assert models(name)[1].global_pool == POOLS[name]
    assert ctx.info["modified"] is True
    assert named_outputs(before) == ["logits"] and named_outputs(gm) == ["logits", "features"]
    assert ctx.info["outputs"] == ["logits", "features"]
    assert len(gm.graph.nodes) == len(before.graph.nodes)  # an output is added, no node
    logits, features = output_node(gm).args[0]
    head = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "head")
    assert logits is head and features is head.args[0]


def test_features_go_before_the_method_outputs(models) -> None:
    gm, ctx = method_graph(models, "evit")
    layers = ctx.layers
    result = run_passes(gm, (output_features,), ctx)
    assert result.modified is True
    assert named_outputs(result.graph_module) == ["logits", "features"] + [f"kept_ids_{i}" for i in layers]


# ----------------------------------------------------------------------------- negative


def test_graph_without_a_head_module_is_unchanged(models) -> None:
    _, spec = models("test_vit")
    gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2)))
    ctx = PassContext(spec, debug=True)
    gm = assert_noop(gm, (output_features,), ctx)
    assert named_outputs(gm) == ["logits"] and "outputs" not in ctx.info


# ----------------------------------------------------------------------------- idempotence


def test_second_run_changes_nothing(models) -> None:
    _, gm, ctx = run_output_features(models, "test_vit")
    gm = assert_noop(gm, (output_features,), ctx)
    assert named_outputs(gm) == ["logits", "features"]


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", list(POOLS))
def test_features_equal_timm_pre_logits(models, images, name: str) -> None:
    """Bit-exact: the graph is timm's own forward traced, run by the same CPU kernels."""
    model, spec = models(name)
    _, gm, _ = run_output_features(models, name)
    x = images(spec, 2)
    with torch.no_grad():
        logits, features = gm(x)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        expected_logits = model(x)
    assert features.shape == (2, spec.embed_dim)
    assert torch.equal(features, expected)
    assert torch.equal(logits, expected_logits)
