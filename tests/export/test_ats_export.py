"""ONNX export of tokcompile::ats_sample: one AtsSample node calling a model-local function, batch
AND token count symbolic, and ONNX Runtime (CPU) equal to the torch op on several token counts
with the same exported file.

A tiny module (inputs attn, v, valid) goes through the export form of
``tokcompile.export.onnx`` (``_export_form`` swaps the op for ``onnx_symbolic``,
``_attach_functions`` appends the body). Two exports in all (~3 s each on 2 CPU cores).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.fx as fx

from tokcompile.export.onnx import _attach_functions, _cleanup, _export_form
from tokcompile.ops.ats_sample import ats_sample

OPSET = 18
H, HD = 6, 64
INPUTS = ("attn", "v", "valid")


class Sampler(torch.nn.Module):
    def __init__(self, num_samples: int) -> None:
        super().__init__()
        self.num_samples = num_samples

    def forward(self, attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
        return ats_sample(attn, v, valid, self.num_samples)


@dataclass
class Exported:
    num_samples: int
    path: Path
    model: onnx.ModelProto
    custom: list[str]

    def session(self) -> ort.InferenceSession:
        return ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])


def make_inputs(counts: list[int], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    valid = torch.arange(n) < torch.tensor(counts).unsqueeze(1)
    logits = 3 * torch.randn(len(counts), H, n, generator=gen)
    attn = logits.masked_fill(~valid.unsqueeze(1), float("-inf")).softmax(dim=-1)
    v = torch.randn(len(counts), H, n, HD, generator=gen)
    return attn, v, valid


def _export(num_samples: int, path: Path) -> Exported:
    gm = fx.symbolic_trace(Sampler(num_samples))
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [ats_sample]
    module = _export_form(gm).eval()
    example = make_inputs([50, 30], 50, seed=0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.export.Dim("tokens", min=2, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=["rows", "count"],
            dynamic_shapes=({0: batch, 2: tokens}, {0: batch, 2: tokens}, {0: batch, 1: tokens}),
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    custom = _attach_functions(model, OPSET)
    model = _cleanup(model)
    onnx.save_model(model, str(path))
    return Exported(num_samples, path, onnx.load(str(path)), custom)


@pytest.fixture(scope="module", params=[196, 50], ids=["M196", "M50"])
def exported(request, tmp_path_factory) -> Exported:
    return _export(request.param, tmp_path_factory.mktemp(f"ats_{request.param}") / "ats.onnx")


def _attrs(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def test_passes_full_checker(exported: Exported) -> None:
    onnx.checker.check_model(exported.model, full_check=True)


def test_one_ats_sample_node_with_a_model_local_function(exported: Exported) -> None:
    model = exported.model
    assert exported.custom == ["AtsSample"]
    nodes = [n for n in model.graph.node if n.op_type == "AtsSample"]
    assert len(nodes) == 1 and nodes[0].domain == "tokcompile"
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx", "tokcompile")]
    assert _attrs(nodes[0]) == {"num_samples": exported.num_samples}  # --plugins auto: native body
    functions = [f for f in model.functions if f.name == "AtsSample"]
    assert len(functions) == 1
    fn = functions[0]
    assert fn.domain == "tokcompile" and len(fn.input) == 3 and len(fn.output) == 2
    assert "num_samples" in set(fn.attribute) | {a.name for a in fn.attribute_proto}
    ops = {n.op_type for n in fn.node}
    assert ops >= {"CumSum", "ScatterElements", "GatherElements", "ReduceMin", "Floor"}
    assert not ops & {"TopK", "ArgMin", "ArgMax"}  # stable pairwise rank; argmin as two exact reductions
    for node in fn.node:
        assert node.domain in ("", "ai.onnx")
        if node.op_type == "ScatterElements":
            assert _attrs(node).get("reduction", "none") == "none"
            # never M picks into n slots (TensorRT rejects indices longer than the data): both
            # scatters write [B, n] positions into the [B, n] zeros
            assert node.input[0] == "AtsSample/zeros" and node.input[1] in ("AtsSample/rank", "AtsSample/target"), node
        if node.op_type == "Cast":
            assert _attrs(node)["to"] != onnx.TensorProto.DOUBLE  # no float64: TensorRT has none
        if node.op_type == "Constant":
            for a in node.attribute:
                assert not (a.type == onnx.AttributeProto.TENSOR and a.t.data_type == onnx.TensorProto.DOUBLE)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("tokcompile") == 1 and opsets.get("", opsets.get("ai.onnx")) == OPSET


def test_batch_and_token_dims_are_symbolic(exported: Exported) -> None:
    def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in exported.model.graph.input}
    assert list(inputs) == list(INPUTS)
    batch, tokens = inputs["valid"]
    assert isinstance(batch, str) and isinstance(tokens, str) and batch != tokens
    assert inputs["attn"] == [batch, H, tokens] and inputs["v"] == [batch, H, tokens, HD]
    outputs = {o.name: dims(o) for o in exported.model.graph.output}
    assert outputs == {"rows": [batch, tokens], "count": [batch]}
    assert exported.model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


@pytest.mark.parametrize(
    ("n", "counts"),
    [
        (197, [197, 150, 101, 60, 37, 10, 3, 2]),
        (120, [120, 119, 64, 2, 1]),
        (37, [37, 20, 5]),
        (197, [197]),  # unpadded, batch 1
        (2, [2, 1]),
        (1, [1, 1]),  # only CLS
    ],
)
def test_onnxruntime_matches_torch(exported: Exported, n: int, counts: list[int]) -> None:
    session = exported.session()
    for seed in range(3):
        attn, v, valid = make_inputs(counts, n, seed=seed)
        rows, count = session.run(None, {"attn": attn.numpy(), "v": v.numpy(), "valid": valid.numpy()})
        expected_rows, expected_count = ats_sample(attn, v, valid, exported.num_samples)
        assert rows.dtype == np.int64 and count.dtype == np.int64
        np.testing.assert_array_equal(count, expected_count.numpy())
        np.testing.assert_array_equal(rows, expected_rows.numpy())


def test_onnxruntime_degenerate_and_tied_scores(exported: Exported) -> None:
    n = 30
    attn = torch.full((4, H, n), 1.0 / n)  # every score equal
    v = torch.ones(4, H, n, HD)
    valid = torch.ones(4, n, dtype=torch.bool)
    v[1] = 0  # all scores 0: keep everything in position order
    attn[2, :, 1:] = 0
    valid[3, 2:] = False  # one non-CLS token
    rows, count = exported.session().run(None, {"attn": attn.numpy(), "v": v.numpy(), "valid": valid.numpy()})
    expected_rows, expected_count = ats_sample(attn, v, valid, exported.num_samples)
    np.testing.assert_array_equal(count, expected_count.numpy())
    np.testing.assert_array_equal(rows, expected_rows.numpy())
    assert count[1:].tolist() == [n, n, 2] and rows[1].tolist() == list(range(n))
