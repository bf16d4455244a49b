"""A rewritten GraphModule and its exported ONNX model, shared by the export tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import torch.fx as fx

from tokcompile.models import ModelSpec
from tokcompile.passes.manager import PassContext


@dataclass
class Exported:
    gm: fx.GraphModule
    ctx: PassContext
    path: Path
    facts: dict
    model: onnx.ModelProto

    @property
    def spec(self) -> ModelSpec:
        return self.ctx.spec

    def nodes(self, op_type: str) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if n.op_type == op_type]
