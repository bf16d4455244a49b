"""passes/names.py: output names and metadata keys, the one place they are spelled.

Every per-block output a method's graph names parses back to its kind and block; the kinds are
what readers (compare, show, the runtime) branch on.
"""

from __future__ import annotations

import pytest
from pass_helpers import method_graph

from tokcompile.passes import names
from tokcompile.passes.graph_outputs import named_outputs


def test_block_names_round_trip() -> None:
    for kind in names.BLOCK_KINDS:
        for block in (0, 7, 11):
            assert names.parse_output_name(names.block_output(kind, block)) == (kind, block)
    assert names.kept_ids_name(3) == "kept_ids_3"
    assert names.merge_map_name(0) == "merge_map_0"
    assert names.count_name(11) == "count_11"
    assert names.parse_output_name("head_count_2") == ("head_count", 2)  # not count_...
    assert names.parse_output_name("logits") == ("logits", None)
    assert names.parse_output_name("features") == ("features", None)
    assert names.parse_output_name("kept_ids") == ("kept_ids", None)
    assert names.parse_output_name("other_3") == ("other_3", None)  # no known kind
    assert names.is_kind("count_4", names.COUNT) and not names.is_kind("mlp_count_4", names.COUNT)
    with pytest.raises(ValueError, match="unknown per-block output kind"):
        names.block_output("kept", 1)


def test_metadata_keys_are_distinct_and_namespaced() -> None:
    keys = [v for k, v in vars(names).items() if k.endswith("_KEY")]
    assert len(keys) == len(set(keys)) >= 11 and all(k.startswith("tokcompile.") for k in keys)


@pytest.mark.parametrize(
    ("method", "kinds"),
    [
        ("evit", {"kept_ids"}),
        ("tome", {"merge_map"}),
        ("ats", {"count", "kept_ids"}),
        ("avit", {"count", "kept_ids"}),
        ("adavit", {"count", "kept_ids", "tokens", "heads", "layers", "head_count", "mlp_count"}),
    ],
)
def test_every_output_a_method_names_parses(models, method: str, kinds: set[str]) -> None:
    params = {"r": 4} if method == "tome" else {}
    gm, _ = method_graph(models, method, **params)
    outputs = named_outputs(gm)
    assert outputs[0] == names.LOGITS
    parsed = [names.parse_output_name(n) for n in outputs[1:]]
    assert all(block is not None for _, block in parsed), outputs
    assert {kind for kind, _ in parsed} == kinds
