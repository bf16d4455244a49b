"""insert_avit_halting: A-ViT halting, halted tokens removed (compacted) after every block.

Per STYLE.md item 7: the positive rewrite (op and node counts), negative cases, idempotence,
and numerics of the rewritten graph on a batch against the official dense masking form of
methods-reference.md §4.2 (``reference_avit.official_masked_avit``) with a stated tolerance.
"""

from __future__ import annotations

import pytest
import torch
from pass_helpers import assert_noop, calls, method_graph
from reference_avit import official_masked_avit

from tokcompile.errors import TokcompileError
from tokcompile.methods import get_method, resolve_config
from tokcompile.models.tracing import capture, find_blocks
from tokcompile.ops.avit_halting import avit_init, avit_update, gather_c, ponder_tokens
from tokcompile.ops.compact_tokens import compact_tokens
from tokcompile.ops.padded_tokens import all_valid, gather_tokens, key_padding_bias, valid_prefix
from tokcompile.ops.token_ids import initial_ids, sampled_ids
from tokcompile.passes.graph_outputs import named_outputs
from tokcompile.passes.insert_avit_halting import insert_avit_halting
from tokcompile.passes.manager import PassContext
from tokcompile.passes.names import BOUNDARY_KEY, TOKEN_DIM_KEY, TOKEN_OP_KEY

# Random weights put channel 0 of a block output near N(0, 1): with β 3 tokens halt after a
# few blocks, at different depths per token and image (the released β 75 halts nothing, §4.3).
GAMMA, BETA = 10.0, 3.0
# fp32; fused SDPA with -inf on removed keys here vs explicit softmax with -1000 there.
LOGITS_ATOL = 1e-4
# Per block: the update and its 5 outputs; per compacting block: op, rows, count, gathered
# tokens, gathered c, valid, ids; once: init and its 4 outputs, all_valid, initial_ids, ponder.
NODES_PER_BLOCK, NODES_PER_COMPACTION, NODES_ONCE = 6, 7, 8


# ----------------------------------------------------------------------------- positive


def test_rewrite_halts_after_every_block_and_pools_the_ponder_cls(models) -> None:
    model, spec = models("test_vit")
    before = capture(model)
    gm, ctx = method_graph(models, "avit", passes=(insert_avit_halting,), gamma=GAMMA, beta=BETA)
    assert ctx.info["modified"] is True
    depth = spec.depth
    assert calls(gm, avit_update) == depth and calls(gm, avit_init) == calls(gm, ponder_tokens) == 1
    for target in (compact_tokens, gather_tokens, gather_c, valid_prefix, sampled_ids):
        assert calls(gm, target) == depth - 1, target  # the last block halts everything: no compaction
    assert calls(gm, all_valid) == calls(gm, initial_ids) == 1
    blocks = find_blocks(gm)
    masked = [b.index for b in blocks if b.sdpa.kwargs.get("attn_mask") is not None]
    assert masked == list(range(1, depth)) and calls(gm, key_padding_bias) == depth - 1
    expected = len(before.graph.nodes) + NODES_ONCE + NODES_PER_BLOCK * depth
    expected += (NODES_PER_COMPACTION + 1) * (depth - 1)  # + the key mask of the next block
    assert len(gm.graph.nodes) == expected
    assert named_outputs(gm) == ["logits"] + [f"{k}_{i}" for i in range(depth - 1) for k in ("count", "kept_ids")]

    updates = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is avit_update]
    for block, update in zip(blocks, updates, strict=True):
        y, *_, gamma, beta, threshold, last = update.args
        assert y is block.mlp_residual and (gamma, beta, threshold) == (GAMMA, BETA, 1 - ctx.config.eps)
        assert last is (block.index == depth - 1)
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is compact_tokens]
    assert [op.meta[TOKEN_OP_KEY] for op in ops] == list(range(depth - 1))
    for block, op, update in zip(blocks, ops, updates):
        assert op.meta[BOUNDARY_KEY] == block.index
        tokens = next(u for u in block.mlp_residual.users if u.target is gather_tokens)
        assert tokens.meta[TOKEN_DIM_KEY] == 1 and tokens.meta[BOUNDARY_KEY] == block.index
        # The next block reads the compacted tokens, not the full block output (the state
        # initialisers of block 0 read its shape only).
        readers = {u for u in block.mlp_residual.users if u.target not in (avit_init, all_valid, initial_ids)}
        assert readers == {update, tokens}
    # The classifier reads norm(ponder-weighted CLS), not the last block's output.
    ponder = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target is ponder_tokens)
    assert set(blocks[-1].mlp_residual.users) == {updates[-1], ponder}


# ----------------------------------------------------------------------------- negative


def test_graph_with_a_token_op_is_left_alone(models) -> None:
    gm, _ = method_graph(models, "evit")
    _, spec = models("test_vit")
    config = resolve_config(get_method("avit"), spec, {})
    assert_noop(gm, (insert_avit_halting,), PassContext(spec, config, debug=True))
    assert calls(gm, avit_update) == 0


def test_models_without_a_single_cls_are_refused(models) -> None:
    _, spec = models("test_vit2")
    with pytest.raises(TokcompileError, match="needs exactly one prefix token"):
        resolve_config(get_method("avit"), spec, {})


def test_nothing_halts_with_the_released_beta_and_the_model_stays_dense(models, images) -> None:
    """β 75 on random weights: h ≈ e^-75 everywhere, so no token halts before the last block
    and the ponder-weighted CLS is the last block's CLS (methods-reference §4.3)."""
    model, spec = models("test_vit")
    gm, _ = method_graph(models, "avit", gamma=10.0, beta=75.0)
    x = images(spec, 3)
    with torch.no_grad():
        got = dict(zip(named_outputs(gm), gm(x), strict=True))
        dense = model(x)
    torch.testing.assert_close(got["logits"], dense, atol=1e-5, rtol=0)
    for i in range(spec.depth - 1):
        assert got[f"count_{i}"].tolist() == [spec.num_tokens] * 3
        assert torch.equal(got[f"kept_ids_{i}"], torch.arange(spec.num_tokens).expand(3, -1))


# ----------------------------------------------------------------------------- idempotence


def test_second_run_changes_nothing(models, images) -> None:
    gm, ctx = method_graph(models, "avit", gamma=GAMMA, beta=BETA)
    gm = assert_noop(gm, (insert_avit_halting,), ctx)
    assert_noop(gm, get_method("avit").pipeline, ctx, images(ctx.spec, 2))


# ----------------------------------------------------------------------------- numerics


def test_batch_matches_the_official_masked_form(models, images) -> None:
    model, spec = models("test_vit")
    gm, _ = method_graph(models, "avit", gamma=GAMMA, beta=BETA)
    x = images(spec, 6, seed=2)
    with torch.no_grad():
        got = dict(zip(named_outputs(gm), gm(x), strict=True))
    ref_logits, running = official_masked_avit(model, x, GAMMA, BETA)
    err = (got["logits"] - ref_logits).abs().max().item()
    assert err <= LOGITS_ATOL, f"logits max abs error {err:.2e} > {LOGITS_ATOL}"
    counts = torch.stack([got[f"count_{i}"] for i in range(spec.depth - 1)], dim=1)
    assert int(counts.min()) < spec.num_tokens and len({tuple(c) for c in counts.tolist()}) > 1, "must halt"
    for i in range(spec.depth - 1):
        for b in range(x.shape[0]):
            # Running tokens after block i, ascending; once CLS halted only CLS is carried on
            # (nothing else reaches the logits).
            ids = running[i][b].nonzero().squeeze(1).tolist() if running[i][b, 0] else [0]
            count = int(got[f"count_{i}"][b])
            assert count == len(ids), (b, i)
            assert got[f"kept_ids_{i}"][b, :count].tolist() == ids, (b, i)
            assert (got[f"kept_ids_{i}"][b, count:] == -1).all()
