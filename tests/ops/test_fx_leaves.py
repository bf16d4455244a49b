"""Every tensor function a pass inserts is an fx leaf: symbolic tracing records it as one
``call_function`` node (``torch.fx.wrap`` in its ops module) instead of tracing its body, so a
captured or re-traced graph keeps it whole and passes find it by target."""

from __future__ import annotations

import importlib

import pytest
import torch.fx as fx

LEAVES = {
    "cls_attention": ["cls_attention_row"],
    "ats_cls_attention": ["ats_cls_attention"],
    "tome_metric": ["tome_metric", "token_sizes"],
    "proportional_attention": ["size_attention_bias"],
    "avit_halting": ["avit_init", "avit_update", "ponder_tokens", "gather_c"],
    "adavit_block": [
        "adavit_decide",
        "sublayer_rows",
        "compacted_position",
        "kept_rows",
        "adavit_attention",
        "adavit_mlp",
    ],
    "padded_tokens": ["all_valid", "key_padding_bias", "gather_tokens", "valid_prefix"],
    "token_ids": ["initial_ids", "sampled_ids", "gather_token_ids", "compose_merge_map"],
}


@pytest.mark.parametrize(("module", "name"), [(m, n) for m, names in LEAVES.items() for n in names])
def test_traced_as_one_call(module: str, name: str) -> None:
    ops = importlib.import_module(f"tokcompile.ops.{module}")
    fn = getattr(ops, name)
    # a function of as many traced inputs as the leaf has parameters that calls it through its
    # module (where torch.fx.wrap patches it during tracing)
    args = ", ".join(f"a{i}" for i in range(fn.__code__.co_argcount))
    traced = fx.symbolic_trace(eval(f"lambda {args}: ops.{name}({args})", {"ops": ops}))
    calls = [node for node in traced.graph.nodes if node.op in ("call_function", "call_method")]
    assert len(calls) == 1 and calls[0].target is fn, [(node.op, node.target) for node in calls]
