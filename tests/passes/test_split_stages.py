"""split_stages: every node gets a stage; a stage ends where a token count becomes known.

Per STYLE.md item 7: the positive assignment (stage counts per method, what crosses a stage
boundary), static methods as the negative case (one stage), idempotence, and numerics: the
stages run one after another reproduce the unsplit graph exactly (torch's own
``split_module`` on the stage marks, and a stage-by-stage interpreter written here), and still
do when the token tensors are cut to the batch's largest count between stages, as the runtime
buckets them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx
from pass_helpers import method_graph
from torch.fx.passes.split_module import split_module

from tokcompile.methods import get_method
from tokcompile.passes.graph_outputs import named_outputs, output_node
from tokcompile.passes.manager import run_passes
from tokcompile.passes.names import BOUNDARY_KEY, STAGE_KEY, TOKEN_DIM_KEY, TOKEN_OP_KEY
from tokcompile.passes.output_features import output_features
from tokcompile.passes.split_stages import split_stages

AVIT = {"gamma": 10.0, "beta": 3.0}  # random weights: tokens halt after a few blocks
STAGED = [
    # (method, params, stages on test_vit: 6 blocks)
    ("ats", {"layers": [2, 4]}, 3),  # one stage per sampling layer, plus the first
    ("avit", AVIT, 6),  # a compaction after every block but the last
    ("adavit", {}, 7),  # decisions at the start of every block: before block 0 too
]
CUT_ATOL = 1e-5  # fp32; attention over fewer (masked, zero-weight) keys sums in another order


def staged_graph(models, method: str, **params: Any) -> tuple[fx.GraphModule, Any]:
    passes = (*get_method(method).pipeline, output_features, split_stages)
    return method_graph(models, method, passes=passes, **params)


def stage_of(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: n.meta[STAGE_KEY] for n in gm.graph.nodes if n.op != "output"}


# ----------------------------------------------------------------------------- positive


@pytest.mark.parametrize(("method", "params", "stages"), STAGED)
def test_a_stage_ends_after_each_compaction(models, method: str, params: dict, stages: int) -> None:
    gm, ctx = staged_graph(models, method, **params)
    assert ctx.info["stages"] == stages
    stage = stage_of(gm)
    assert set(stage.values()) == set(range(stages))
    for node, s in stage.items():
        for inp in node.all_input_nodes:
            assert stage[inp] <= s, f"{node} (stage {s}) reads {inp} of a later stage {stage[inp]}"
            # Methods that drop tokens: only what a compaction made (its boundary group) enters
            # a later stage. AdaViT also carries its full residual stream and the decisions
            # (skipped tokens come back in the next block).
            if stage[inp] < s and method != "adavit":
                assert inp.op == "get_attr" or BOUNDARY_KEY in inp.meta, f"{inp} crosses into stage {s}"
    for node in (n for n in stage if n.op == "get_attr"):  # a parameter lives with its first user
        users = {stage[u] for u in node.users}
        assert stage[node] == min(users), node.target
        # AdaViT's norm1 is read by the decisions and by the attention a stage later (each
        # stage file gets its own copy); elsewhere no parameter is read in two stages.
        assert len(users) == 1 or (method == "adavit" and ".norm1." in node.target), node.target
    # Each stage but the last ends with exactly one token op's compaction.
    ops = [n for n in stage if TOKEN_OP_KEY in n.meta]
    assert sorted(stage[op] for op in ops) == list(range(stages - 1))


# ----------------------------------------------------------------------------- negative


@pytest.mark.parametrize("method", ["none", "evit", "tome"])
def test_static_methods_are_one_stage(models, method: str) -> None:
    gm, ctx = method_graph(models, method, passes=(*get_method(method).pipeline, output_features))
    code = gm.code
    result = run_passes(gm, (split_stages,), ctx)
    assert result.modified is False and result.graph_module.code == code  # no rewrite, marks only
    assert ctx.info["stages"] == 1 and set(stage_of(gm).values()) == {0}


# ----------------------------------------------------------------------------- idempotence


@pytest.mark.parametrize(("method", "params", "stages"), STAGED[:2])
def test_second_run_assigns_the_same_stages(models, method: str, params: dict, stages: int) -> None:
    gm, ctx = staged_graph(models, method, **params)
    code, first = gm.code, stage_of(gm)
    result = run_passes(gm, (split_stages,), ctx)
    assert result.modified is False and result.graph_module.code == code
    assert stage_of(result.graph_module) == first and ctx.info["stages"] == stages


# ----------------------------------------------------------------------------- numerics


def run_stage_by_stage(gm: fx.GraphModule, x: torch.Tensor, cut: bool) -> dict[str, torch.Tensor]:
    """Run every node of stage 0, then of stage 1, ...; a node reading a later stage fails.

    With ``cut``, after each stage the token tensors a later stage reads (``TOKEN_DIM_KEY``) are
    cut to the largest count of that stage's token op, the smallest bucket the runtime may use.
    """
    stage = stage_of(gm)
    interp = fx.Interpreter(gm)
    interp.args_iter = iter([x])
    for s in range(1 + max(stage.values())):
        for node in (n for n in gm.graph.nodes if stage.get(n) == s):
            interp.env[node] = interp.run_node(node)
        op = next((n for n in stage if stage[n] == s and TOKEN_OP_KEY in n.meta), None)
        if not cut or op is None:
            continue
        count = next(u for u in op.users if u.args[1] == 1)
        width = int(interp.env[count].max())
        for node in stage:
            later = any(u.op != "output" and stage[u] > s for u in node.users)
            if stage[node] == s and node.meta.get(TOKEN_DIM_KEY) and later:
                interp.env[node] = interp.env[node][:, :width]
    values = fx.node.map_arg(output_node(gm).args[0], lambda n: interp.env[n])
    return dict(zip(named_outputs(gm), values, strict=True))


@pytest.mark.parametrize(("method", "params", "stages"), STAGED)
def test_stages_in_sequence_reproduce_the_unsplit_graph(models, images, method, params, stages) -> None:
    model, spec = models("test_vit")
    gm, _ = staged_graph(models, method, **params)
    x = images(spec, 4, seed=2)
    with torch.no_grad():
        whole = dict(zip(named_outputs(gm), gm(x), strict=True))
        split = split_module(gm, model, lambda n: n.meta[STAGE_KEY], keep_original_order=True)
        assert len([n for n in split.graph.nodes if n.op == "call_module"]) == stages
        by_split = dict(zip(named_outputs(gm), split(x), strict=True))
        by_stage = run_stage_by_stage(gm, x, cut=False)
    for name, value in whole.items():
        assert torch.equal(by_split[name], value), name
        assert torch.equal(by_stage[name], value), name


@pytest.mark.parametrize(("method", "params", "stages"), STAGED[:2])
def test_stages_reproduce_the_graph_with_tokens_cut_between_them(models, images, method, params, stages) -> None:
    """Inside a stage every shape follows from its input token count: cutting the padded token
    tensors to the batch's largest count changes no result."""
    _, spec = models("test_vit")
    gm, _ = staged_graph(models, method, **params)
    x = images(spec, 4, seed=2)
    with torch.no_grad():
        whole = dict(zip(named_outputs(gm), gm(x), strict=True))
        cut = run_stage_by_stage(gm, x, cut=True)
    counts = [v for k, v in whole.items() if k.startswith("count_")]
    assert int(max(c.max() for c in counts)) < spec.num_tokens, "no stage was cut: the case lost its point"
    for name in ("logits", "features"):
        torch.testing.assert_close(cut[name], whole[name], atol=CUT_ATOL, rtol=0)
    for name in (n for n in whole if n.startswith("count_")):
        assert torch.equal(cut[name], whole[name]), name
    for name in (n for n in whole if n.startswith("kept_ids_")):
        width = cut[name].shape[1]
        assert torch.equal(cut[name], whole[name][:, :width]) and (whole[name][:, width:] == -1).all(), name
