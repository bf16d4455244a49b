"""cast_precision: fp16/bf16 parameters and activations with float32 islands (DESIGN.md §5).

Per STYLE.md item 7: the positive rewrite (node counts, parameter dtypes), fp32 and a bad
precision as negative cases, idempotence (and a refused recast), and numerics: the dtype every
node computes in (LayerNorm statistics, the scoring rows and the selection inputs stay float32,
the rest is half) and the half graph's outputs against the float32 graph with a stated tolerance.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from pass_helpers import assert_noop, calls, method_graph

from tokcompile.errors import TokcompileError
from tokcompile.methods import get_method
from tokcompile.ops.ats_cls_attention import ats_cls_attention
from tokcompile.ops.ats_sample import ats_sample
from tokcompile.ops.cls_attention import cls_attention_row
from tokcompile.ops.evit_select import evit_select
from tokcompile.passes.cast_precision import cast_precision
from tokcompile.passes.graph_outputs import named_outputs
from tokcompile.passes.manager import PassError, run_passes
from tokcompile.passes.output_features import output_features

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Max abs error of logits (|logits| ≤ ~0.6 on test_vit) and features (|features| ≤ ~4) against
# the float32 graph: 10 units of the format's rounding (fp16 2^-11, bf16 2^-8) times the largest
# magnitude, for rounding compounded over 6 blocks. Measured on test_vit: fp16 9e-4 / 4e-3,
# bf16 7e-3 / 3e-2.
ATOL = {"fp16": {"logits": 1e-2, "features": 2e-2}, "bf16": {"logits": 5e-2, "features": 1.5e-1}}


def half_graph(models, method: str, precision: str, **params: Any) -> tuple[fx.GraphModule, Any]:
    """test_vit with ``method``'s pipeline, output_features and cast_precision, as a build runs them."""
    passes = (*get_method(method).pipeline, output_features, cast_precision)
    return method_graph(models, method, passes=passes, precision=precision, **params)


class DtypeRecorder(fx.Interpreter):
    """Runs a graph and records the dtype of every tensor a node produces."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.dtypes: dict[fx.Node, torch.dtype] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.dtypes[n] = out.dtype
        return out


def call_nodes(gm: fx.GraphModule, target: object) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def module_nodes(gm: fx.GraphModule, kind: type) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), kind)]


# ----------------------------------------------------------------------------- positive


@pytest.mark.parametrize("precision", list(HALF))
def test_rewrite_casts_parameters_and_keeps_float32_islands(models, precision: str) -> None:
    model, _ = models("test_vit")
    before, _ = method_graph(models, "none", passes=(output_features,))
    gm, ctx = half_graph(models, "none", precision)
    assert ctx.info["modified"] is True and gm.meta["tokcompile.precision"] == precision
    # Islands: every LayerNorm of the model (traced to F.layer_norm), and for bf16 the patch
    # embedding Conv. Each gets x.float() before and .to(half) after; the image input gets one
    # cast, and logits and features one .float() each.
    layer_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert calls(gm, F.layer_norm) == layer_norms == 2 * len(model.blocks) + 1
    islands = layer_norms + (precision == "bf16")
    assert len(gm.graph.nodes) == len(before.graph.nodes) + 1 + 2 * islands + 2
    norm_params = {
        f"{path}.{p}"
        for path, m in model.named_modules()
        if isinstance(m, torch.nn.LayerNorm)
        for p in ("weight", "bias")
    }
    conv_params = {
        f"{path}.{p}" for path, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) for p in ("weight", "bias")
    }
    float32 = norm_params | (conv_params if precision == "bf16" else set())
    for name, tensor in gm.state_dict().items():
        assert tensor.dtype == (torch.float32 if name in float32 else HALF[precision]), name
    # The source model is never touched (passes/README invariant 8).
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------- negative


def test_fp32_leaves_graph_unchanged(models) -> None:
    gm, ctx = method_graph(models, "evit", passes=(*get_method("evit").pipeline, output_features))
    ctx.info["precision"] = "fp32"
    gm = assert_noop(gm, (cast_precision,), ctx)
    assert "tokcompile.precision" not in gm.meta
    assert all(t.dtype == torch.float32 for t in gm.state_dict().values() if t.is_floating_point())


def test_unknown_precision_is_a_user_error(models) -> None:
    with pytest.raises(TokcompileError, match="--precision must be one of fp32, fp16, bf16, got 'fp8'"):
        half_graph(models, "none", "fp8")


# ----------------------------------------------------------------------------- idempotence


@pytest.mark.parametrize("precision", list(HALF))
def test_second_run_changes_nothing_and_a_recast_is_refused(models, images, precision: str) -> None:
    gm, ctx = half_graph(models, "evit", precision)
    gm = assert_noop(gm, (cast_precision,), ctx, images(ctx.spec, 2))
    code = gm.code
    for other in {"fp32", *HALF} - {precision}:  # the graph is half already: casting again would break it
        ctx.info["precision"] = other
        with pytest.raises(PassError, match=f"already cast to {precision}"):
            run_passes(gm, (cast_precision,), ctx)
        assert gm.code == code


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("precision", list(HALF))
@pytest.mark.parametrize("method", ["evit", "ats"])
def test_scoring_selection_and_layer_norm_stay_float32(models, images, method: str, precision: str) -> None:
    low = HALF[precision]
    gm, ctx = half_graph(models, method, precision)
    recorder = DtypeRecorder(gm)
    with torch.no_grad():
        outputs = dict(zip(named_outputs(gm), recorder.run(images(ctx.spec, 2)), strict=True))
    dtype = recorder.dtypes
    for ln in call_nodes(gm, F.layer_norm):  # statistics in float32, result back to half
        assert dtype[ln.args[0]] == dtype[ln] == torch.float32, ln
        assert [dtype[u] for u in ln.users] == [low], ln
    for conv in module_nodes(gm, torch.nn.Conv2d):
        assert dtype[conv] == (torch.float32 if precision == "bf16" else low)
    linears = module_nodes(gm, torch.nn.Linear)
    assert linears and all(dtype[n] == low for n in linears)
    sdpas = call_nodes(gm, F.scaled_dot_product_attention)
    assert sdpas and all(dtype[n] == low for n in sdpas)
    # Scoring rows are float32 and feed the selection ops as float32, whatever the precision.
    rows, ops = (
        (call_nodes(gm, cls_attention_row), call_nodes(gm, evit_select))
        if method == "evit"
        else (call_nodes(gm, ats_cls_attention), call_nodes(gm, ats_sample))
    )
    assert len(rows) == len(ops) == len(ctx.layers)
    assert all(dtype[r] == torch.float32 for r in rows)
    assert all(dtype[op.args[1 if method == "evit" else 0]] == torch.float32 for op in ops)
    assert outputs["logits"].dtype == outputs["features"].dtype == torch.float32


@pytest.mark.parametrize("precision", list(HALF))
def test_half_outputs_match_float32(models, images, precision: str) -> None:
    model, spec = models("test_vit")
    gm, _ = half_graph(models, "none", precision)
    x = images(spec, 4)
    with torch.no_grad():
        logits, features = gm(x)
        ref_logits = model(x)
        ref_features = model.forward_head(model.forward_features(x), pre_logits=True)
    for name, got, ref in (("logits", logits, ref_logits), ("features", features, ref_features)):
        assert got.dtype == torch.float32
        err = (got - ref).abs().max().item()
        assert 0 < err <= ATOL[precision][name], f"{precision} {name}: max abs error {err:.2e}"
