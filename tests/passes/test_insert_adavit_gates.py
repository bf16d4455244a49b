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
from tokcompile.models import ModelSpec, create_model
from tokcompile.models.tracing import capture
from tokcompile.ops.adavit_block import adavit_attention, adavit_decide, adavit_mlp
from tokcompile.ops.compact_tokens import compact_tokens
from tokcompile.passes.graph_outputs import named_outputs
from tokcompile.passes.insert_adavit_gates import HOLDER, insert_adavit_gates
from tokcompile.passes.manager import PassContext, run_passes
from tokcompile.passes.names import BOUNDARY_KEY, COUNT_DIM_KEY, TOKEN_OP_KEY

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
    """Capture test_vit with ``state``'s decision heads (as a checkpoint would carry them: the method
    tensors of its checkpoint adapter, prepared as ``apply_method`` prepares them) and run the
    AdaViT pipeline (or ``passes``)."""
    model, spec = models("test_vit")
    method = get_method("adavit")
    config = resolve_config(method, spec, params)
    heads = method.checkpoint_adapter(state)[1] if state is not None else {}
    ctx = PassContext(spec, config, debug=True)
    ctx.method_state, warnings = method.prepare_state(spec, config, heads)
    if warnings:
        ctx.info["method_warnings"] = warnings
    result = run_passes(capture(model), method.pipeline if passes is None else passes, ctx)
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
    gm1, ctx1 = adavit_graph(models, None, passes=(insert_adavit_gates,), heads_seed=7)
    gm2, _ = adavit_graph(models, None, passes=(insert_adavit_gates,), heads_seed=7)
    gm3, _ = adavit_graph(models, None, passes=(insert_adavit_gates,), heads_seed=8)
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
    model, spec, _, _ = create_model(name, weights="random", **model_args)
    config = adavit_method.AdavitConfig(0.6, 0.5, 0.5, 1, 0)  # as resolve() would give for test_vit
    gm = capture(model)
    code, nodes = gm.code, len(gm.graph.nodes)
    with pytest.raises(TokcompileError, match=match):
        insert_adavit_gates(gm, PassContext(spec, config, debug=True))
    assert gm.code == code and len(gm.graph.nodes) == nodes and not hasattr(gm, HOLDER)


class RenamedBlock(torch.nn.Module):
    """A DeiT block whose modules carry none of timm's names (no attn.qkv, mlp.fc1, ...)."""

    def __init__(self, dim: int, heads: int, extra_norm: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(dim + heads)
        self.heads, self.extra_norm = heads, extra_norm
        self.g1, self.b1, self.g2, self.b2 = (
            torch.nn.Parameter(0.1 * torch.randn(dim, generator=g) + s) for s in (1, 0, 1, 0)
        )
        self.to_qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.up, self.nl, self.down = torch.nn.Linear(dim, 3 * dim), torch.nn.GELU(), torch.nn.Linear(3 * dim, dim)
        self.post = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = F.layer_norm(x, (C,), self.g1, self.b1, 1e-6)
        q, k, v = self.to_qkv(h).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        if self.extra_norm:
            a = F.layer_norm(a, (C,), self.post, None, 1e-6)
        x = x + self.out(a)
        return x + self.down(self.nl(self.up(F.layer_norm(x, (C,), self.g2, self.b2, 1e-6))))


class RenamedViT(torch.nn.Module):
    """Tokens [B, N, C] (CLS first) → blocks → a classifier on the CLS: no timm module names."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 3, extra_norm: bool = False) -> None:
        super().__init__()
        self.stack = torch.nn.Sequential(*(RenamedBlock(dim, heads, extra_norm and i == 1) for i in range(depth)))
        self.classifier = torch.nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stack(x)[:, 0])


def renamed_spec(depth: int = 3, dim: int = 32, heads: int = 4, tokens: int = 9) -> ModelSpec:
    return ModelSpec("renamed", depth, dim, heads, 1, True, "token", (24, 24), tokens - 1, 5, (8, 8), (3, 3))


def test_blocks_are_recognised_by_structure_not_module_names() -> None:
    """passes/README.md invariant 5: DeiT blocks under other module names are rewritten. With
    decision heads that keep every token, head and sub-layer, the rewrite computes the dense model."""
    model = RenamedViT().eval()
    spec = renamed_spec()
    gm = fx.symbolic_trace(model)
    config = adavit_method.AdavitConfig(0.6, 0.5, 0.5, 1, 0)
    ctx = PassContext(spec, config, debug=True)
    heads, _ = adavit_method.prepare_state(spec, config, {})
    # zero weights, bias 10: sigmoid ≈ 1 > every threshold, so nothing is skipped
    ctx.method_state = {k: torch.zeros_like(v) + (10.0 if k.endswith("_bias") else 0.0) for k, v in heads.items()}
    x = torch.randn(4, spec.num_tokens, spec.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model(x)
    result = run_passes(gm, (insert_adavit_gates,), ctx)
    gm = result.graph_module
    assert result.modified and calls(gm, adavit_attention) == calls(gm, adavit_mlp) == spec.depth
    assert calls(gm, F.scaled_dot_product_attention) == 0
    with torch.no_grad():
        got = gm(x)[0]
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=0)


def test_a_block_with_an_extra_norm_is_refused_by_structure() -> None:
    model = RenamedViT(extra_norm=True).eval()
    spec = renamed_spec()
    gm = fx.symbolic_trace(model)
    with pytest.raises(TokcompileError, match=r"'stack\.1' is a layer with parameter 'stack\.1\.post'"):
        insert_adavit_gates(gm, PassContext(spec, adavit_method.AdavitConfig(0.6, 0.5, 0.5, 1, 0), debug=True))
    assert not hasattr(gm, HOLDER)


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
