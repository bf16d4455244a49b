"""insert_adavit_gates: AdaViT head, sub-layer and token skipping with real skipping (gather/skip).

Per STYLE.md item 7: the positive rewrite (op counts), negative cases (a refused model leaves the
graph unchanged; a graph that has token ops is left alone), idempotence, and numerics of the
rewritten graph on a batch against the official dense-masking forward of methods-reference.md
§5.2 (``reference_adavit.official_masked_adavit``), decisions exactly, logits with a stated
tolerance.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from pass_helpers import assert_noop, calls, method_graph
from reference_adavit import adavit_state, official_masked_adavit

from tokcompile.errors import TokcompileError
from tokcompile.methods import adavit as adavit_method
from tokcompile.methods import get_method, resolve_config
from tokcompile.models import create_model
from tokcompile.models.tracing import capture
from tokcompile.ops.compact_tokens import compact_tokens
from tokcompile.passes._outputs import named_outputs
from tokcompile.passes._tokens import BOUNDARY_KEY, COUNT_DIM_KEY
from tokcompile.passes.insert_adavit_gates import (
    HOLDER,
    METHOD_STATE_KEY,
    adavit_attention,
    adavit_decide,
    adavit_mlp,
    insert_adavit_gates,
)
from tokcompile.passes.insert_evit_select import TOKEN_OP_KEY
from tokcompile.passes.manager import PassContext, run_passes

LOGITS_ATOL = 1e-4  # fp32; gathered rows and heads with fused SDPA vs dense masks and -inf logits
BATCH = 6


@pytest.fixture(scope="module")
def state(models) -> dict[str, torch.Tensor]:
    """test_vit's weights in the official AdaViT layout, decision heads that skip for some images."""
    model, _ = models("test_vit")
    return adavit_state(model)


def adavit_graph(
    models, state: Optional[dict[str, torch.Tensor]], passes: Any = None, **params: Any
) -> tuple[fx.GraphModule, PassContext]:
    """Capture test_vit with ``state``'s decision heads (as a checkpoint would carry them) and run
    the AdaViT pipeline (or ``passes``)."""
    model, spec = models("test_vit")
    config = resolve_config(get_method("adavit"), spec, params)
    gm = capture(model)
    if state is not None:
        gm.meta[METHOD_STATE_KEY] = {k: v for k, v in state.items() if "_select." in k}
    ctx = PassContext(spec, config, debug=True)
    result = run_passes(gm, adavit_method.PIPELINE if passes is None else passes, ctx)
    ctx.info["modified"] = result.modified
    return result.graph_module, ctx


def block_outputs(depth: int, keep_layers: int) -> list[str]:
    names = []
    for i in range(depth):
        names += [f"count_{i}", f"kept_ids_{i}", f"tokens_{i}", f"heads_{i}", f"layers_{i}"]
        names += [f"head_count_{i}", f"mlp_count_{i}"] if i >= keep_layers else []
    return names


# ----------------------------------------------------------------------------- positive


def test_rewrite_replaces_every_block(models, state) -> None:
    model, spec = models("test_vit")
    before = capture(model)
    assert calls(before, F.scaled_dot_product_attention) == spec.depth and calls(before, adavit_decide) == 0
    gm, ctx = adavit_graph(models, state)
    assert ctx.info["modified"] is True
    depth, gated = spec.depth, spec.depth - ctx.config.keep_layers
    for target in (adavit_decide, adavit_attention, adavit_mlp):
        assert calls(gm, target) == depth, target
    # Attention rows in every block; kept heads and MLP rows in the gated blocks.
    assert calls(gm, compact_tokens) == depth + 2 * gated
    # The original blocks are gone: no fused attention, no block module is called any more.
    assert calls(gm, F.scaled_dot_product_attention) == 0
    assert not [n for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("blocks.")]
    assert named_outputs(gm) == ["logits"] + block_outputs(depth, ctx.config.keep_layers)

    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is compact_tokens]
    attention_ops = [n for n in ops if TOKEN_OP_KEY in n.meta]
    assert [n.meta[TOKEN_OP_KEY] for n in attention_ops] == list(range(depth))
    assert sorted(n.meta[COUNT_DIM_KEY] for n in ops) == sorted(["tokens"] * depth + ["heads", "mlp_tokens"] * gated)
    assert all(BOUNDARY_KEY in n.meta for n in ops)
    # The decision heads are the checkpoint's, held as buffers of the graph module.
    holder = gm.get_submodule(HOLDER)
    assert torch.equal(holder.b3_heads_weight, state["blocks.3.head_select.mlp_head.weight"])
    assert torch.equal(holder.b0_tokens_bias, state["blocks.0.attn.token_select.mlp_head.bias"])
    assert not hasattr(holder, "b0_heads_weight")  # block 0 < keep_layers: no head selector
    assert "method_warnings" not in ctx.info


def test_without_checkpoint_heads_the_random_heads_are_seeded_and_announced(models) -> None:
    gm1, ctx1 = adavit_graph(models, None, passes=(insert_adavit_gates,), seed=7)
    gm2, _ = adavit_graph(models, None, passes=(insert_adavit_gates,), seed=7)
    gm3, _ = adavit_graph(models, None, passes=(insert_adavit_gates,), seed=8)
    assert any("RANDOM (seed 7)" in w for w in ctx1.info["method_warnings"])
    b1, b2, b3 = (dict(g.get_submodule(HOLDER).named_buffers()) for g in (gm1, gm2, gm3))
    assert b1.keys() == b2.keys() and all(torch.equal(b1[k], b2[k]) for k in b1)
    assert not torch.equal(b1["b2_heads_weight"], b3["b2_heads_weight"])


# ----------------------------------------------------------------------------- negative


@pytest.mark.parametrize(
    ("name", "model_args", "match"),
    [
        ("test_vit", {"init_values": 0.5}, "'blocks.0.ls1' is a layer with parameter 'blocks.0.ls1.gamma'"),
        ("test_vit", {"qk_norm": True}, "'blocks.0.attn.q_norm' is a layer with parameter"),
        ("test_vit2", {}, "LayerScale"),  # no CLS either: only a hand-built config reaches the pass
    ],
)
def test_a_refused_model_is_left_unchanged(name: str, model_args: dict, match: str) -> None:
    """LayerScale and qk-norm (timm traces both through, they are no modules in the graph) are
    not in AdaViT's blocks; every block is validated before any is rewritten, so the refusal
    leaves the graph as it was."""
    model, spec, _ = create_model(name, weights="random", **model_args)
    config = adavit_method.AdavitConfig(0.6, 0.5, 0.5, 1, 0)  # as resolve() would give for test_vit
    gm = capture(model)
    code, nodes = gm.code, len(gm.graph.nodes)
    with pytest.raises(TokcompileError, match=match):
        insert_adavit_gates(gm, PassContext(spec, config, debug=True))
    assert gm.code == code and len(gm.graph.nodes) == nodes and not hasattr(gm, HOLDER)


def test_models_without_a_single_cls_are_refused(models) -> None:
    _, spec = models("test_vit2")
    with pytest.raises(TokcompileError, match="CLS token"):
        resolve_config(get_method("adavit"), spec, {})


def test_graph_with_a_token_op_is_left_alone(models) -> None:
    gm, _ = method_graph(models, "evit")
    _, spec = models("test_vit")
    config = resolve_config(get_method("adavit"), spec, {})
    assert_noop(gm, (insert_adavit_gates,), PassContext(spec, config, debug=True))
    assert calls(gm, adavit_decide) == 0


# ----------------------------------------------------------------------------- idempotence


def test_second_run_changes_nothing(models, state, images) -> None:
    gm, ctx = adavit_graph(models, state)
    assert_noop(gm, (insert_adavit_gates,), ctx, images(ctx.spec, 2))


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("keep_layers", [1, 6])  # the official setting; no head/layer gate at all
def test_batch_matches_the_official_masked_form(models, state, images, keep_layers: int) -> None:
    model, spec = models("test_vit")
    gm, _ = adavit_graph(models, state, keep_layers=keep_layers)
    x = images(spec, BATCH, seed=3)
    with torch.no_grad():
        got = dict(zip(named_outputs(gm), gm(x), strict=True))
    ref_logits, decisions = official_masked_adavit(model, state, x, keep_layers=keep_layers)
    err = (got["logits"] - ref_logits).abs().max().item()
    assert err <= LOGITS_ATOL, f"logits max abs error {err:.2e} > {LOGITS_ATOL}"
    skipped = {"tokens": 0, "heads": 0, "layers": 0}
    for i, (tokens, heads, layers) in enumerate(decisions):
        assert torch.equal(got[f"tokens_{i}"], tokens), i
        assert torch.equal(got[f"heads_{i}"], heads), i
        assert torch.equal(got[f"layers_{i}"], layers), i
        skipped["tokens"] += int((~tokens).sum())
        skipped["heads"] += int((~heads).sum())
        skipped["layers"] += int((~layers).sum())
        # Attention rows: the selected tokens of an image whose attention is on, CLS always.
        rows = tokens & layers[:, :1]
        rows[:, 0] = True
        assert got[f"count_{i}"].tolist() == rows.sum(dim=1).tolist(), i
        if i >= keep_layers:
            assert got[f"head_count_{i}"].tolist() == heads.sum(dim=1).tolist(), i
    if keep_layers == 1:
        assert all(skipped.values()), skipped  # the case exercises every kind of skipping
    else:
        assert skipped["tokens"] and not skipped["heads"] and not skipped["layers"]
