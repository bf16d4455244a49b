"""Run one token op's ONNX function body on its own: a one-node model, checked, in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


def run_function_body(
    onnx_function: Callable[[int], object],
    node: onnx.NodeProto,
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    feeds: dict[str, np.ndarray],
) -> list[np.ndarray]:
    """``node`` (domain tokcompile) calling ``onnx_function(18)`` as a model-local function;
    ``full_check`` passes before ONNX Runtime runs it on ``feeds``."""
    graph = helper.make_graph([node], node.op_type, list(inputs), list(outputs))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("tokcompile", 1)],
        functions=[onnx_function(18).to_function_proto()],
        ir_version=10,
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
