"""tokcompile::compact_tokens (A-ViT's halting, AdaViT's token gate) and its ONNX function body.

The oracle is the contract read literally (kept positions ascending, then the others ascending),
computed with Python's ``sorted``; it shares no code with ``tokcompile.ops.compact_tokens``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from function_body import run_function_body
from onnx import TensorProto, helper

from tokcompile.ops.compact_tokens import ONNX_NAME, compact_tokens, onnx_function


def contract(keep: torch.Tensor) -> tuple[list[list[int]], list[int]]:
    rows, counts = [], []
    for row in keep.tolist():
        kept = [p for p, k in enumerate(row) if k]
        rows.append(kept + sorted(set(range(len(row))) - set(kept)))
        counts.append(len(kept))
    return rows, counts


def masks(seed: int, B: int = 5, n: int = 37) -> torch.Tensor:
    keep = torch.rand(B, n, generator=torch.Generator().manual_seed(seed)) < 0.4
    keep[:, 0] = True  # CLS is always kept
    keep[1] = False
    keep[1, 0] = True  # only CLS
    keep[2] = True  # everything
    return keep


@pytest.mark.parametrize("seed", [0, 1])
def test_op_follows_the_contract(seed: int) -> None:
    keep = masks(seed)
    rows, count = compact_tokens(keep)
    expected_rows, expected_count = contract(keep)
    assert rows.tolist() == expected_rows and count.tolist() == expected_count


def _run_body(keep: torch.Tensor) -> list[np.ndarray]:
    return run_function_body(
        onnx_function,
        helper.make_node(ONNX_NAME, ["keep"], ["rows", "count"], domain="tokcompile"),
        [helper.make_tensor_value_info("keep", TensorProto.BOOL, ["B", "n"])],
        [
            helper.make_tensor_value_info("rows", TensorProto.INT64, ["B", "n"]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["B"]),
        ],
        {"keep": keep.numpy()},
    )


@pytest.mark.parametrize(("seed", "n"), [(0, 37), (1, 197), (2, 2)])
def test_onnx_body_matches_the_contract(seed: int, n: int) -> None:
    """The same file runs every token count (n is dynamic), and names no tensor '_'."""
    keep = masks(seed, n=max(n, 3))[:, :n]
    rows, count = _run_body(keep)
    expected_rows, expected_count = contract(keep)
    assert rows.tolist() == expected_rows and count.tolist() == expected_count
    fn = onnx_function(18).to_function_proto()
    assert "_" not in {v for node in fn.node for v in node.output}
    assert not {n.op_type for n in fn.node} & {"Slice", "Range", "Expand"}
