"""insert_ats_sample: ATS sampling after the attention residual, padded keys masked after it.

Per STYLE.md item 7: the positive rewrite (op and node counts), negative cases that stay
unchanged, idempotence, and numerics of the rewritten graph on a padded batch against the
per-image ATS of methods-reference.md §3.2 (``reference_ats.eager_ats``: each image alone, the
official eps-softmax everywhere, numpy sampling) with a stated tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pass_helpers import assert_noop, calls, method_graph
from reference_ats import eager_ats

from tokcompile.errors import TokcompileError
from tokcompile.methods import ats as ats_method
from tokcompile.methods import get_method, resolve_config
from tokcompile.models.tracing import capture, find_blocks
from tokcompile.ops.ats_cls_attention import ats_cls_attention
from tokcompile.ops.ats_sample import ats_sample
from tokcompile.ops.padded_tokens import all_valid, gather_tokens, key_padding_bias, valid_prefix
from tokcompile.ops.token_ids import initial_ids, sampled_ids
from tokcompile.passes.graph_outputs import named_outputs
from tokcompile.passes.insert_ats_sample import insert_ats_sample
from tokcompile.passes.manager import PassContext
from tokcompile.passes.names import BOUNDARY_KEY, TOKEN_DIM_KEY, TOKEN_OP_KEY

# fp32; the graph's blocks use fused SDPA with a plain softmax, the reference the official
# eps-softmax (relative difference ~1e-6, methods-reference §3.3).
LOGITS_ATOL = 1e-4
NODES_PER_LAYER = 7  # row, op, rows, count, gathered tokens, valid, ids
NODES_FIRST = 2  # all_valid, initial_ids


def sdpa_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.scaled_dot_product_attention]


# ----------------------------------------------------------------------------- positive


def test_rewrite_inserts_one_sampler_per_layer_and_masks_later_attention(models) -> None:
    model, spec = models("test_vit")
    before = capture(model)
    assert calls(before, ats_sample) == 0 and all(n.kwargs.get("attn_mask") is None for n in sdpa_nodes(before))
    gm, ctx = method_graph(models, "ats", passes=(insert_ats_sample,))
    layers = ctx.layers
    assert layers == ats_method.default_layers(spec.depth) == (2, 3, 4, 5)
    assert ctx.info["modified"] is True
    for target in (ats_sample, ats_cls_attention, gather_tokens, valid_prefix, sampled_ids):
        assert calls(gm, target) == len(layers), target
    assert calls(gm, all_valid) == calls(gm, initial_ids) == 1
    # Every attention after the first sampling layer masks padded keys, none before it does.
    masked = [b.index for b in find_blocks(gm) if b.sdpa.kwargs.get("attn_mask") is not None]
    assert masked == [i for i in range(spec.depth) if i > layers[0]]
    assert all(b.sdpa.kwargs["attn_mask"].target is key_padding_bias for b in find_blocks(gm) if b.index in masked)
    assert calls(gm, key_padding_bias) == len(masked)
    expected_nodes = len(before.graph.nodes) + NODES_PER_LAYER * len(layers) + NODES_FIRST + len(masked)
    assert len(gm.graph.nodes) == expected_nodes
    assert named_outputs(gm) == ["logits"] + [f"{kind}_{i}" for i in layers for kind in ("count", "kept_ids")]

    blocks = {b.index: b for b in find_blocks(gm)}
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ats_sample]
    assert [op.meta[TOKEN_OP_KEY] for op in ops] == list(layers)
    for op in ops:
        block = blocks[op.meta[TOKEN_OP_KEY]]
        row, v, valid, samples = op.args
        assert row.target is ats_cls_attention and row.args[:2] == (block.q, block.k)
        assert v is block.sdpa.args[2] and samples == spec.num_tokens - 1  # M = n_ref - 1 (§3.2)
        assert valid.target in (all_valid, valid_prefix)
        assert op.meta[BOUNDARY_KEY] == block.index
        # The MLP (norm2 and its residual) reads the sampled rows of the attention residual.
        tokens = next(u for u in block.attn_residual.users if u.target is gather_tokens)
        assert tokens.meta[TOKEN_DIM_KEY] == 1 and tokens in block.mlp_residual.args


def test_budget_sets_the_number_of_samples(models) -> None:
    gm, ctx = method_graph(models, "ats", passes=(insert_ats_sample,), layers=[1, 3], max_tokens="40,20")
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ats_sample]
    assert [op.args[3] for op in ops] == [39, 19]  # M = K - 1


# ----------------------------------------------------------------------------- negative


def test_no_layers_leaves_graph_unchanged(models) -> None:
    model, spec = models("test_vit")
    config = resolve_config(get_method("ats"), spec, {"layers": []})
    assert config.layers == ()
    gm = assert_noop(capture(model), (insert_ats_sample,), PassContext(spec, config, layers=(), debug=True))
    assert named_outputs(gm) == ["logits"] and calls(gm, ats_sample) == 0


def test_layers_that_do_not_exist_leave_graph_unchanged(models) -> None:
    model, spec = models("test_vit")
    with pytest.raises(TokcompileError, match="out of range"):
        resolve_config(get_method("ats"), spec, {"layers": [99]})
    config = ats_method.AtsConfig(layers=(99,), max_tokens=(spec.num_tokens,))  # by hand: resolve refuses it
    assert_noop(capture(model), (insert_ats_sample,), PassContext(spec, config, layers=config.layers, debug=True))


def test_graph_with_a_token_op_is_left_alone(models) -> None:
    gm, ctx = method_graph(models, "evit")
    _, spec = models("test_vit")
    config = resolve_config(get_method("ats"), spec, {})
    assert_noop(gm, (insert_ats_sample,), PassContext(spec, config, layers=config.layers, debug=True))
    assert calls(gm, ats_sample) == 0


def test_models_without_a_single_cls_are_refused(models) -> None:
    _, spec = models("test_vit2")  # register token, no class token
    with pytest.raises(TokcompileError, match="no class token"):
        resolve_config(get_method("ats"), spec, {})


# ----------------------------------------------------------------------------- idempotence


def test_second_run_changes_nothing(models, images) -> None:
    gm, ctx = method_graph(models, "ats")
    gm = assert_noop(gm, (insert_ats_sample,), ctx)
    assert_noop(gm, get_method("ats").pipeline, ctx, images(ctx.spec, 3))


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize(
    ("layers", "max_tokens"),
    [(None, None), ([1, 3, 5], "40")],  # default blocks 2..5 with K = N; K < N in alternate blocks
)
def test_padded_batch_matches_per_image_ats(models, images, layers, max_tokens) -> None:
    model, spec = models("test_vit")
    gm, ctx = method_graph(models, "ats", layers=layers, max_tokens=max_tokens)
    budgets = dict(zip(ctx.config.layers, ctx.config.max_tokens))
    x = images(spec, 4, seed=3)
    with torch.no_grad():
        got = dict(zip(named_outputs(gm), gm(x), strict=True))
    counts = torch.stack([got[f"count_{i}"] for i in budgets], dim=1)
    # The case must sample (fewer tokens than the input) and pad (counts differ across images).
    assert int(counts.max()) < spec.num_tokens and len({tuple(c) for c in counts.tolist()}) > 1
    for b in range(x.shape[0]):
        ref_logits, ref_kept = eager_ats(model, x[b : b + 1], budgets)
        err = (got["logits"][b] - ref_logits[0]).abs().max().item()
        assert err <= LOGITS_ATOL, f"image {b}: logits max abs error {err:.2e} > {LOGITS_ATOL}"
        for layer, ids in ref_kept.items():
            count = int(got[f"count_{layer}"][b])
            assert count == ids.size, (b, layer)
            kept = got[f"kept_ids_{layer}"][b].numpy()
            np.testing.assert_array_equal(kept[:count], ids, err_msg=f"image {b} block {layer}")
            assert (kept[count:] == -1).all()
