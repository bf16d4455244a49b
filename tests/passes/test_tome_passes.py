"""ToMe passes (insert_tome_merge, add_proportional_attention, output_merge_maps, annotate_tokens)
and the method config (methods/tome.py).

Per STYLE.md item 7: positive rewrite with op counts, negative cases that stay unchanged,
idempotence, and numerics against an eager ToMe forward written here from methods-reference.md
§2 (explicit softmax attention with the log(size) bias, official-style bipartite matching and
scatter-reduce merge) with a stated tolerance.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.fx as fx
from pass_helpers import assert_noop, calls, method_graph
from reference_tome import eager_tome

from tokcompile.errors import TokcompileError
from tokcompile.methods import get_method, resolve_config
from tokcompile.methods import tome as tome_method
from tokcompile.models.tracing import capture, find_blocks
from tokcompile.ops.evit_select import evit_select
from tokcompile.ops.proportional_attention import size_attention_bias
from tokcompile.ops.tome_merge import tome_merge
from tokcompile.ops.tome_metric import token_sizes, tome_metric
from tokcompile.passes.add_proportional_attention import add_proportional_attention
from tokcompile.passes.annotate_tokens import annotate_tokens
from tokcompile.passes.graph_outputs import named_outputs as output_names
from tokcompile.passes.insert_tome_merge import insert_tome_merge
from tokcompile.passes.manager import PassContext
from tokcompile.passes.names import TOKEN_OP_KEY
from tokcompile.passes.output_kept_indices import output_kept_indices
from tokcompile.passes.output_merge_maps import output_merge_maps

LOGITS_ATOL = 1e-4  # fp32, fused SDPA with a float mask in the graph vs explicit softmax here
DEIT_R13 = [184, 171, 158, 145, 132, 119, 106, 93, 80, 67, 54, 41]
DEIT_R16 = [181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21, 11]
DEIT_R16_INFLECT = [165, 136, 110, 87, 67, 50, 36, 25, 17, 12, 10, 10]


# ----------------------------------------------------------------------------- reference


# ----------------------------------------------------------------------------- positive


def test_rewrite_merges_every_block_and_biases_attention_after_the_first(models) -> None:
    model, spec = models("deit_t")
    before = capture(model)
    assert calls(before, tome_merge) == 0
    gm, ctx = method_graph(models, "tome", "deit_t")
    assert ctx.info["modified"] is True
    assert ctx.info["pass_history"] == [p.__name__ for p in get_method("tome").pipeline]
    assert ctx.layers == tuple(range(12)) and ctx.config.r == (13,) * 12
    assert calls(gm, tome_merge) == 12 and calls(gm, tome_metric) == 12 and calls(gm, token_sizes) == 1
    merges = [n for n in gm.graph.nodes if n.target is tome_merge]
    assert [n.meta[TOKEN_OP_KEY] for n in merges] == list(range(12))
    assert [n.args[3:] for n in merges] == [(13, 1)] * 12
    # Sizes thread from merge to merge; the metric is the mean over heads of that block's SDPA k.
    blocks = find_blocks(gm)
    assert merges[0].args[2].target is token_sizes
    for block, merge, prev in zip(blocks, merges, [None, *merges[:-1]]):
        assert merge.args[1].target is tome_metric and merge.args[1].args[0] is block.k
        assert merge.args[0] is block.attn_residual
        if prev is not None:
            assert merge.args[2].args == (prev, 1)
    # Proportional attention: every block after the first merge, none before.
    assert calls(gm, size_attention_bias) == 11
    assert blocks[0].sdpa.kwargs["attn_mask"] is None
    for block, prev in zip(blocks[1:], merges[:-1]):
        bias = block.sdpa.kwargs["attn_mask"]
        assert bias.target is size_attention_bias and bias.args == (prev.next.next, block.q)
        assert bias.args[0].args == (prev, 1)
    assert output_names(gm) == ["logits"] + [f"merge_map_{i}" for i in range(12)]


def test_layers_subset_and_prop_attn_off(models) -> None:
    gm, ctx = method_graph(models, "tome", "test_vit", r=8, layers=[2, 4])
    assert ctx.config.r == (0, 0, 8, 0, 8, 0)
    assert calls(gm, tome_merge) == 2 and calls(gm, size_attention_bias) == 3  # blocks 3, 4, 5
    masks = [b.sdpa.kwargs["attn_mask"] for b in find_blocks(gm)]
    assert masks[:3] == [None] * 3 and all(m is not None for m in masks[3:])
    assert output_names(gm) == ["logits", "merge_map_2", "merge_map_4"]
    assert ctx.info["tokens"]["sequence"] == [101, 93, 85]

    gm, ctx = method_graph(models, "tome", "test_vit", r=8, prop_attn=False)
    assert calls(gm, tome_merge) == 6 and calls(gm, size_attention_bias) == 0
    assert all(b.sdpa.kwargs["attn_mask"] is None for b in find_blocks(gm))


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize(("r", "expected"), [(13, DEIT_R13), (16, DEIT_R16), ((16, -1), DEIT_R16_INFLECT)])
def test_deit_tiny_token_counts(r: Any, expected: list[int], models) -> None:
    """methods-reference §2.1, counts verified on the official patch."""
    _, spec = models("deit_t")
    config = tome_method.TomeConfig.resolve(spec, r=r)
    requested = tome_method.merge_schedule(r, 12)
    assert tome_method.token_counts(197, 1, requested) == expected
    assert tome_method.token_counts(197, 1, config.r) == expected
    gm, ctx = method_graph(models, "tome", "deit_t", passes=(insert_tome_merge, annotate_tokens), r=r)
    tokens = ctx.info["tokens"]
    assert tokens["sequence"] == [197, *expected]
    assert [b["attention"] for b in tokens["blocks"]] == [197, *expected[:-1]]
    assert [b["mlp"] for b in tokens["blocks"]] == expected


def test_r_is_capped_with_a_warning(models, caplog) -> None:
    _, spec = models("deit_t")
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        config = tome_method.TomeConfig.resolve(spec, r=16)
    assert config.r == (16,) * 11 + (10,)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "capped" in warnings[0].getMessage() and "block 11: 16→10" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        tome_method.TomeConfig.resolve(spec, r=13)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (13, [13] * 12),
        ("13", [13] * 12),
        ([13, 13, 8], [13, 13, 8] + [0] * 9),
        ("13,13,8", [13, 13, 8] + [0] * 9),
        ((16, -1), [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]),
        ("16:-1", [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]),
        ("(16,-1)", [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]),
        ((8, 0.5), [4, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12]),
    ],
)
def test_merge_schedule(given: Any, expected: list[int]) -> None:
    assert tome_method.merge_schedule(given, 12) == expected


@pytest.mark.parametrize(
    ("given", "pattern"),
    [
        (-1, r"--r must not be negative, got -1"),
        ("-3", r"--r must not be negative"),
        ((8, 2.0), r"--r must not be negative"),  # lo = int(8·(1−2)) = −8
        ("abc", r"--r must be an int \(13\), a per-block list"),
        ("1.5", r"--r must be an int"),
        ([1] * 13, r"--r lists 13 values but the model has 12 blocks"),
    ],
)
def test_bad_r_is_a_user_error(given: Any, pattern: str, models) -> None:
    _, spec = models("deit_t")
    with pytest.raises(TokcompileError, match=pattern):
        tome_method.TomeConfig.resolve(spec, r=given)


def test_config_defaults_params_round_trip(models) -> None:
    _, spec = models("deit_t")
    method = get_method("tome")
    config = resolve_config(method, spec, {"r": None, "prop_attn": None, "layers": None})
    assert config == tome_method.TomeConfig((13,) * 12, tuple(range(12)), True)
    params = config.params()
    assert params == {"r": [13] * 12, "layers": list(range(12)), "prop_attn": True}
    assert resolve_config(method, spec, params) == config
    capped = tome_method.TomeConfig.resolve(spec, r="16:-1", layers=["0", "1", "5"], prop_attn=False)
    assert capped.r == (32, 29, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0) and capped.prop_attn is False
    assert tome_method.TomeConfig.resolve(spec, **capped.params()) == capped
    with pytest.raises(TokcompileError, match="has no parameter keep_rate"):
        resolve_config(method, spec, {"keep_rate": 0.7})
    with pytest.raises(TokcompileError, match="block 12 is out of range"):
        tome_method.TomeConfig.resolve(spec, layers=[12])


def test_cli_flags_reach_the_config() -> None:
    import argparse

    from tokcompile.cli import build as build_cmd

    parser = argparse.ArgumentParser()
    build_cmd.add_arguments(parser)
    args = parser.parse_args(["deit_t", "--method", "tome", "--r", "16:-1", "--no-prop-attn"])
    assert args.r == "16:-1" and args.prop_attn is False
    args = parser.parse_args(["deit_t", "--method", "tome"])
    assert args.r is None and args.prop_attn is None


# ----------------------------------------------------------------------------- negative


def _unchanged(gm: fx.GraphModule, passes, ctx: PassContext) -> fx.GraphModule:
    gm = assert_noop(gm, passes, ctx)
    assert calls(gm, tome_merge) == 0 and calls(gm, size_attention_bias) == 0
    return gm


def test_no_layers_leaves_graph_unchanged(test_vit, images) -> None:
    model, spec = test_vit
    config = tome_method.TomeConfig.resolve(spec, layers=[])
    assert config.layers == () and config.r == (0,) * 6
    ctx = PassContext(spec, config, layers=config.layers, debug=True)
    gm = _unchanged(capture(model), get_method("tome").pipeline, ctx)
    assert output_names(gm) == ["logits"]
    assert ctx.info["tokens"]["sequence"] == [spec.num_tokens]
    x = images(spec, 2)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=LOGITS_ATOL, rtol=0)


def test_later_passes_alone_leave_graph_unchanged(test_vit) -> None:
    """Without merges: no bias, no merge maps (and output_kept_indices ignores ToMe graphs)."""
    model, spec = test_vit
    config = tome_method.TomeConfig.resolve(spec)
    ctx = PassContext(spec, config, layers=config.layers, debug=True)
    _unchanged(capture(model), (add_proportional_attention, output_merge_maps, annotate_tokens), ctx)
    _unchanged(capture(model), (add_proportional_attention,), PassContext(spec, None, debug=True))


def test_evit_passes_ignore_tome_merges(models) -> None:
    gm, ctx = method_graph(models, "tome", "test_vit", passes=(insert_tome_merge,), r=8)
    gm = assert_noop(gm, (output_kept_indices,), ctx)
    assert calls(gm, evit_select) == 0


# ----------------------------------------------------------------------------- idempotence


def test_pipeline_is_idempotent(models, images) -> None:
    gm, ctx = method_graph(models, "tome", "test_vit", r=8)
    x = images(ctx.spec, 2)
    with torch.no_grad():
        first = gm(x)
    for passes in [get_method("tome").pipeline] + [(p,) for p in get_method("tome").pipeline]:
        gm = assert_noop(gm, passes, ctx)
    assert calls(gm, tome_merge) == 6 and calls(gm, size_attention_bias) == 5
    with torch.no_grad():
        again = gm(x)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


# ----------------------------------------------------------------------------- numerics


NUMERIC_CASES = [
    # (model, r, prop_attn, layers)
    ("test_vit", 8, True, None),
    ("test_vit", 8, False, None),
    ("test_vit", "12:-1", True, None),  # schedule 24, 19, 14, 9, 4, 0: the last block is an identity
    ("test_vit", 50, True, [1, 3]),  # r capped to all 50 non-CLS A tokens in block 1
    ("test_vit2", 8, True, None),  # a register token and no CLS (global average pooling)
    ("deit_t", 13, True, None),
]


@pytest.mark.parametrize(("name", "r", "prop_attn", "layers"), NUMERIC_CASES)
def test_numerics_match_eager_tome(name: str, r: Any, prop_attn: bool, layers: Any, models, images) -> None:
    model, spec = models(name)
    gm, ctx = method_graph(models, "tome", name, r=r, prop_attn=prop_attn, layers=layers)
    x = images(spec, 2)
    with torch.no_grad():
        logits, *maps = gm(x)
    ref_logits, ref_maps = eager_tome(model, x, ctx.config.r, prop_attn)

    assert logits.shape == (2, spec.num_classes)
    err = (logits - ref_logits).abs().max().item()
    assert err <= LOGITS_ATOL, f"logits max abs error {err:.2e} > {LOGITS_ATOL}"
    assert len(maps) == len(ctx.layers)
    expected = tome_method.token_counts(spec.num_tokens, spec.num_prefix_tokens, ctx.config.r)
    for layer, got in zip(ctx.layers, maps, strict=True):
        assert got.dtype == torch.int64 and got.shape == (2, spec.num_tokens)
        if ctx.config.r[layer] == 0:  # an identity merge: the map is the previous one
            continue
        assert torch.equal(got, ref_maps[layer]), f"{name} block {layer}: merge maps differ"
        assert int(got.max()) + 1 == expected[layer]
    assert ctx.info["tokens"]["sequence"] == [spec.num_tokens] + [expected[i] for i in ctx.layers]
