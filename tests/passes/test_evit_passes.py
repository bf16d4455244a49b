"""EViT passes (capture_cls_attention, insert_evit_select, output_kept_indices, annotate_tokens).

Per STYLE.md item 7: positive rewrite with op counts, negative cases that stay unchanged,
idempotence, and numerics against an eager EViT forward written here from methods-reference.md
§1.2 (non-fused attention, official top-k + complement fusion) with a stated tolerance.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Optional

import pytest
import torch
import torch.fx as fx
from pass_helpers import assert_noop, calls
from reference_vit import embed_tokens, heads_qkv

from tokcompile.errors import TokcompileError
from tokcompile.methods import evit as evit_method
from tokcompile.methods import get_method
from tokcompile.models.tracing import capture, find_blocks
from tokcompile.ops.cls_attention import cls_attention_row
from tokcompile.ops.evit_select import evit_select
from tokcompile.ops.token_ids import initial_ids as initial_token_ids
from tokcompile.passes.annotate_tokens import annotate_tokens
from tokcompile.passes.capture_cls_attention import capture_cls_attention
from tokcompile.passes.graph_outputs import named_outputs as output_names
from tokcompile.passes.insert_evit_select import insert_evit_select
from tokcompile.passes.manager import PassContext, PassError, PassResult, run_passes
from tokcompile.passes.names import TOKEN_OP_KEY
from tokcompile.passes.output_kept_indices import output_kept_indices

MODELS = ["test_vit", "deit_t"]
LOGITS_ATOL = 1e-4  # fp32, fused SDPA in the graph vs explicit softmax(QKᵀ)V here


# ----------------------------------------------------------------------------- reference


@torch.no_grad()
def eager_evit(
    model: torch.nn.Module, images: torch.Tensor, layers: Sequence[int], keep_rate: float, fuse: bool
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """EViT on a timm ViT, walking its modules by hand (methods-reference.md §1.2).

    Returns (logits, {block: kept ids [B, k]}), ids being positions in the original token
    sequence (0 = CLS, 1.. = patches, -1 = a fused token made by an earlier layer).
    """
    x = embed_tokens(model, images)
    B, N, C = x.shape
    ids = torch.arange(N).expand(B, N)
    kept_ids: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        h = blk.norm1(x)
        B, N, C = h.shape
        q, k, v = heads_qkv(attn, h)
        A = (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)  # [B, H, N, N], explicit
        o = (A @ v).transpose(1, 2).reshape(B, N, -1)
        x = x + blk.ls1(attn.proj(attn.norm(o)))
        if i in layers:
            keep = math.ceil(keep_rate * (N - 1))
            if keep < N - 1:
                s = A[:, :, 0, 1:].mean(dim=1)  # [B, N-1], CLS→CLS excluded
                _, idx = torch.topk(s, keep, dim=1, largest=True, sorted=True)
                non_cls, non_cls_ids = x[:, 1:], ids[:, 1:]
                kept = torch.gather(non_cls, 1, idx.unsqueeze(-1).expand(-1, -1, C))
                kept_ids[i] = torch.gather(non_cls_ids, 1, idx)
                parts, id_parts = [x[:, :1], kept], [ids[:, :1], kept_ids[i]]
                if fuse:
                    dropped = torch.ones_like(s, dtype=torch.bool)
                    dropped[torch.arange(B).unsqueeze(1), idx] = False
                    compl = torch.stack([torch.nonzero(row).squeeze(1) for row in dropped])  # ascending
                    non_topk = torch.gather(non_cls, 1, compl.unsqueeze(-1).expand(-1, -1, C))
                    weight = torch.gather(s, 1, compl).unsqueeze(-1)  # raw, not renormalised
                    parts.append(torch.sum(non_topk * weight, dim=1, keepdim=True))
                    id_parts.append(torch.full((B, 1), -1))
                x, ids = torch.cat(parts, dim=1), torch.cat(id_parts, dim=1)
            else:
                kept_ids[i] = ids[:, 1:]
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    x = model.norm(x)
    return model.head(model.fc_norm(x[:, 0])), kept_ids


def assert_same_kept_sets(got: torch.Tensor, expected: torch.Tensor, where: str) -> None:
    assert got.shape == expected.shape, where
    assert torch.equal(got.sort(dim=1).values, expected.sort(dim=1).values), f"{where}: kept token sets differ"


# ----------------------------------------------------------------------------- positive


@pytest.mark.parametrize("name", MODELS)
def test_rewrite_inserts_one_op_per_layer(name: str, models, evit_gm) -> None:
    model, spec = models(name)
    before = capture(model)
    assert calls(before, evit_select) == 0 and calls(before, cls_attention_row) == 0

    gm, ctx = evit_gm(name)
    layers = ctx.layers
    assert layers == evit_method.default_layers(spec.depth) and len(layers) == 3
    assert ctx.info["modified"] is True
    assert ctx.info["pass_history"] == [p.__name__ for p in get_method("evit").pipeline]
    assert calls(gm, evit_select) == len(layers)
    assert calls(gm, cls_attention_row) == len(layers)
    assert output_names(gm) == ["logits"] + [f"kept_ids_{i}" for i in layers]

    blocks = {b.index: b for b in find_blocks(gm)}
    assert len(blocks) == spec.depth
    selects = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is evit_select]
    assert [n.meta[TOKEN_OP_KEY] for n in selects] == list(layers)
    for sel in selects:
        block = blocks[sel.meta[TOKEN_OP_KEY]]
        x, row, keep_rate, fuse, num_prefix = sel.args
        # Selection sits on the attention residual; the row comes from the same block's q, k.
        assert x is block.attn_residual
        assert row.target is cls_attention_row and row.args == (block.q, block.k, None)
        assert (keep_rate, fuse, num_prefix) == (ctx.config.keep_rate, ctx.config.fuse, spec.num_prefix_tokens)
        # The attention residual now feeds only the op (and, for the first op, the id bookkeeping
        # of output_kept_indices); the MLP residual adds the selected tokens.
        assert {u for u in block.attn_residual.users if u.target is not initial_token_ids} == {sel}
        tokens = next(u for u in sel.users if u.target is operator.getitem and u.args[1] == 0)
        assert tokens in block.mlp_residual.args


def test_capture_cls_attention_alone_adds_rows_only(test_vit, images) -> None:
    model, spec = test_vit
    gm = capture(model)
    x = images(spec, 2)
    with torch.no_grad():
        dense = gm(x)
    ctx = PassContext(spec, None, layers=(1, 4), debug=True)
    result = run_passes(gm, (capture_cls_attention,), ctx)
    assert result.modified
    assert calls(result.graph_module, cls_attention_row) == 2 and calls(result.graph_module, evit_select) == 0
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), dense)


def test_cls_attention_row_is_the_softmax_cls_row() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 17, 8, generator=gen), torch.randn(2, 3, 17, 8, generator=gen)
    full = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(dim=-1)
    row = cls_attention_row(q.half(), k.half())
    assert row.dtype == torch.float32 and row.shape == (2, 3, 17)
    torch.testing.assert_close(cls_attention_row(q, k), full[:, :, 0], atol=1e-6, rtol=0)


def test_insert_without_capture_is_a_user_error(test_vit) -> None:
    model, spec = test_vit
    config = evit_method.EvitConfig.resolve(spec)
    ctx = PassContext(spec, config, layers=config.layers, debug=True)
    with pytest.raises(TokcompileError, match="capture_cls_attention"):
        run_passes(capture(model), (insert_evit_select,), ctx)


# ----------------------------------------------------------------------------- negative


def _unchanged(gm: fx.GraphModule, passes, ctx: PassContext) -> fx.GraphModule:
    gm = assert_noop(gm, passes, ctx)
    assert calls(gm, evit_select) == 0 and calls(gm, cls_attention_row) == 0
    return gm


@pytest.mark.parametrize("name", MODELS)
def test_no_layers_leaves_graph_unchanged(name: str, models, images) -> None:
    model, spec = models(name)
    config = evit_method.EvitConfig.resolve(spec, layers=[])
    assert config.layers == ()
    ctx = PassContext(spec, config, layers=config.layers, debug=True)
    gm = _unchanged(capture(model), get_method("evit").pipeline, ctx)
    assert output_names(gm) == ["logits"]
    assert ctx.info["tokens"]["sequence"] == [spec.num_tokens]
    x = images(spec, 2)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=LOGITS_ATOL, rtol=0)


def test_layers_that_do_not_exist_leave_graph_unchanged(test_vit) -> None:
    model, spec = test_vit
    # resolve() rejects the block as a user error; a config built by hand reaches the passes.
    with pytest.raises(TokcompileError, match="out of range"):
        evit_method.EvitConfig.resolve(spec, layers=[99])
    config = evit_method.EvitConfig(keep_rate=0.7, layers=(99,), fuse=True)
    _unchanged(capture(model), get_method("evit").pipeline, PassContext(spec, config, layers=config.layers, debug=True))


def test_none_method_leaves_graph_unchanged(test_vit) -> None:
    model, spec = test_vit
    method = get_method("none")
    assert method.pipeline == ()
    _unchanged(capture(model), method.pipeline, PassContext(spec, None, debug=True))


def test_output_kept_indices_without_token_ops_is_a_no_op(test_vit) -> None:
    model, spec = test_vit
    _unchanged(capture(model), (output_kept_indices, annotate_tokens), PassContext(spec, None, debug=True))


# ----------------------------------------------------------------------------- idempotence


@pytest.mark.parametrize("name", MODELS)
def test_pipeline_is_idempotent(name: str, evit_gm, images) -> None:
    gm, ctx = evit_gm(name)
    spec = ctx.spec
    x = images(spec, 2)
    with torch.no_grad():
        first = gm(x)
    for passes in [get_method("evit").pipeline] + [(p,) for p in get_method("evit").pipeline]:
        gm = assert_noop(gm, passes, ctx)
    assert calls(gm, evit_select) == len(ctx.layers) and calls(gm, cls_attention_row) == len(ctx.layers)
    assert output_names(gm) == ["logits"] + [f"kept_ids_{i}" for i in ctx.layers]
    with torch.no_grad():
        again = gm(x)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


# ----------------------------------------------------------------------------- numerics


NUMERIC_CASES = [
    # (model, keep_rate, fuse, layers); None = the method's default layers
    ("test_vit", 0.7, True, None),  # (2, 3, 4): consecutive, the fused token is rescored
    ("test_vit", 0.7, False, None),
    ("test_vit", 0.5, True, [0, 1, 2, 3, 4, 5]),
    ("test_vit", 0.6, True, [5]),  # last block: selection right before the head
    ("deit_t", 0.7, True, None),
    ("deit_t", 0.7, False, None),
]


@pytest.mark.parametrize(("name", "keep_rate", "fuse", "layers"), NUMERIC_CASES)
def test_numerics_match_eager_evit(
    name: str, keep_rate: float, fuse: bool, layers: Optional[list[int]], models, evit_gm, images, token_sequence
) -> None:
    model, spec = models(name)
    gm, ctx = evit_gm(name, keep_rate=keep_rate, fuse=fuse, layers=layers)
    x = images(spec, 2)
    with torch.no_grad():
        logits, *kept = gm(x)
    ref_logits, ref_kept = eager_evit(model, x, ctx.layers, keep_rate, fuse)

    assert logits.shape == (2, spec.num_classes)
    err = (logits - ref_logits).abs().max().item()
    assert err <= LOGITS_ATOL, f"logits max abs error {err:.2e} > {LOGITS_ATOL}"
    assert len(kept) == len(ctx.layers) == len(ref_kept)
    for layer, got in zip(ctx.layers, kept, strict=True):
        assert got.dtype == torch.int64
        assert_same_kept_sets(got, ref_kept[layer], f"{name} block {layer}")

    expected = token_sequence(spec.num_tokens, spec.num_prefix_tokens, keep_rate, fuse, len(ctx.layers))
    assert ctx.info["tokens"]["sequence"] == expected


def test_fused_token_ids_are_minus_one(evit_gm, models, images) -> None:
    """A fused token kept by a later layer reports id -1 (output_kept_indices contract)."""
    model, spec = models("test_vit")
    gm, ctx = evit_gm("test_vit", keep_rate=0.5, fuse=True, layers=[0, 1, 2, 3, 4, 5])
    x = images(spec, 4, seed=5)
    with torch.no_grad():
        _, *kept = gm(x)
    _, ref_kept = eager_evit(model, x, ctx.layers, 0.5, True)
    # Ids are unique per row, in range, and -1 exactly where the reference kept a fused token.
    for layer, got in zip(ctx.layers, kept, strict=True):
        for row in got.tolist():
            real = [i for i in row if i != -1]
            assert len(set(real)) == len(real) and all(1 <= i < spec.num_tokens for i in real)
        assert torch.equal((got == -1).sum(dim=1), (ref_kept[layer] == -1).sum(dim=1))
    assert any(bool((k == -1).any()) for k in kept), "no fused token was kept: test inputs lost their point"


def test_keep_rate_one_is_the_dense_model(evit_gm, test_vit, images) -> None:
    model, spec = test_vit
    gm, ctx = evit_gm("test_vit", keep_rate=1.0)
    assert calls(gm, evit_select) == len(ctx.layers)  # the op is there, as an identity
    x = images(spec, 2)
    with torch.no_grad():
        logits, *kept = gm(x)
        dense = model(x)
    torch.testing.assert_close(logits, dense, atol=LOGITS_ATOL, rtol=0)
    for got in kept:
        assert torch.equal(got, torch.arange(1, spec.num_tokens).expand(2, -1))
    assert ctx.info["tokens"]["sequence"] == [spec.num_tokens] * (len(ctx.layers) + 1)


@pytest.mark.parametrize(("fuse", "sequence"), [(True, [197, 140, 100, 72]), (False, [197, 139, 98, 69])])
def test_deit_tiny_token_counts(fuse: bool, sequence: list[int], evit_gm) -> None:
    gm, ctx = evit_gm("deit_t", fuse=fuse)
    tokens = ctx.info["tokens"]
    assert tokens["sequence"] == sequence
    by_block = {b["block"]: b for b in tokens["blocks"]}
    # Block 3's attention sees 197 tokens and its MLP 140 (methods-reference §1.2), and so on.
    expected_attention = [sequence[0]] * 4 + [sequence[1]] * 3 + [sequence[2]] * 3 + [sequence[3]] * 2
    assert [by_block[i]["attention"] for i in range(12)] == expected_attention
    assert [by_block[i]["mlp"] for i in (3, 6, 9)] == sequence[1:]


# ----------------------------------------------------------------------------- manager


def exploding_pass(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    raise ValueError("boom at node 42")


def graph_breaking_pass(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Uses the output's value before it is defined: only the debug lint catches it."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    first = next(iter(gm.graph.nodes))
    with gm.graph.inserting_after(first):
        gm.graph.call_function(torch.neg, (output.args[0],))
    return PassResult(gm, True)


def test_run_passes_names_the_failing_pass(test_vit) -> None:
    model, spec = test_vit
    config = evit_method.EvitConfig.resolve(spec)
    ctx = PassContext(spec, config, layers=config.layers, debug=True)
    with pytest.raises(PassError) as info:
        run_passes(capture(model), (capture_cls_attention, insert_evit_select, exploding_pass, annotate_tokens), ctx)
    message = str(info.value)
    assert "'exploding_pass'" in message
    assert "capture_cls_attention → insert_evit_select" in message  # the history before it
    assert "annotate_tokens" not in message
    assert "ValueError" in message and "boom at node 42" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_run_passes_names_the_first_pass_with_empty_history(test_vit) -> None:
    model, spec = test_vit
    with pytest.raises(PassError, match=r"pass 'exploding_pass' failed after \[\(none\)\]"):
        run_passes(capture(model), (exploding_pass,), PassContext(spec))


def test_debug_lint_names_the_pass_that_broke_the_graph(test_vit) -> None:
    model, spec = test_vit
    with pytest.raises(PassError, match="graph_breaking_pass"):
        run_passes(
            capture(model), (capture_cls_attention, graph_breaking_pass), PassContext(spec, layers=(2,), debug=True)
        )
