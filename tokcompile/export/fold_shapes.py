"""``fold_static_shapes``: replace the exporter's shape arithmetic on static dimensions by constants.

torch.onnx.export (dynamo) emits, for every view/reshape/unbind whose shape involves the dynamic
batch, a chain such as ``Shape(x) → Slice → Concat → Reshape`` and ``Slice(x, [i], [i+1]) →
Squeeze`` even where every sliced dimension is static. The TensorRT ONNX parser turns each ONNX
``Slice`` into 25-30 int64 shape layers (start/end clamping evaluated at run time), which made
about 70 % of every network's layers. This pass knows the static dimensions (the exported
``value_info``) and rewrites, in the main graph only (function bodies are written by hand):

* ``Shape(x)`` (optionally ``start``/``end``) and ``Slice``/``Gather``/``Concat``/``Squeeze``/
  ``Unsqueeze`` on such shape vectors: tracked symbolically; a vector whose values are all static
  becomes an initializer of the same name, and a contiguous ``Slice``/``Gather`` of a ``Shape``
  that keeps a dynamic value becomes ``Shape(x, start, end)`` (2 parser layers, not ~27);
* ``Reshape(x, shape)`` whose target holds exactly one non-static value: that value becomes -1
  (Reshape infers it from the element count), the target an initializer;
* ``Slice(x, starts, ends, axes, steps)`` with constant parameters on static axes of a tensor:
  one ``Gather(x, constant indices, axis)`` per sliced axis (3 parser layers instead of ~27).

Every rewritten value keeps its name and its values, so ONNX Runtime's outputs are bit-identical
(tested) and only dead nodes disappear. Dimensions named by the exporter (``batch``, ``tokens``)
are never assumed equal to anything.
"""

from __future__ import annotations

import logging
from typing import Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger(__name__)

Dim = Union[int, str]  # a static size, or the name of a dynamic one


def _shapes(graph: onnx.GraphProto) -> dict[str, list[Dim]]:
    """Value name → dims (int where static, the dim_param or "?" where not)."""
    out: dict[str, list[Dim]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return out


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _indices(size: int, start: int, end: int, step: int) -> list[int]:
    """The positions ONNX Slice selects on an axis of ``size`` (starts/ends clamped as the spec says)."""
    return list(range(*slice(start, end, step).indices(size)))


class _Folder:
    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph = graph
        self.shapes = _shapes(graph)
        self.consts = _constants(graph)
        self.outputs = {o.name for o in graph.output}
        self.names = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer}
        self.names |= {i.name for i in graph.input}
        # int64 shape values of rank <= 1: each entry a static int or a dynamic dim's name
        self.vectors: dict[str, list[Dim]] = {
            k: [int(x) for x in v.reshape(-1)] for k, v in self.consts.items() if v.dtype == np.int64 and v.ndim <= 1
        }
        self.scalars = {k for k, v in self.consts.items() if v.dtype == np.int64 and v.ndim == 0}
        self.shape_of: dict[str, tuple[str, int]] = {}  # Shape output → (its input, first dim it holds)
        self.initializers: list[onnx.TensorProto] = []
        self.folded = 0

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def constant(self, name: str, values: np.ndarray) -> None:
        self.initializers.append(numpy_helper.from_array(values, name))
        self.consts[name] = values

    def fold_vector(self, node: onnx.NodeProto, values: list[Dim], scalar: bool = False) -> bool:
        """Record ``node``'s output (1-D, or a scalar); replace the node by an initializer when
        every value is static."""
        out = node.output[0]
        self.vectors[out] = values
        if scalar:
            self.scalars.add(out)
        if all(isinstance(v, int) for v in values) and out not in self.outputs:
            array = np.array(values, dtype=np.int64)
            self.constant(out, array.reshape(()) if scalar else array)
            self.folded += 1
            return True
        return False

    def params(self, node: onnx.NodeProto) -> list[list[int]] | None:
        """Constant starts, ends, axes, steps of a Slice, or None."""
        if not all(i in self.consts for i in node.input[1:] if i):
            return None
        starts = self.consts[node.input[1]].tolist()
        ends = self.consts[node.input[2]].tolist()
        axes = (
            self.consts[node.input[3]].tolist() if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
        )
        steps = self.consts[node.input[4]].tolist() if len(node.input) > 4 and node.input[4] else [1] * len(starts)
        return [starts, ends, axes, steps]

    def rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes that replace ``node`` (``[node]`` when nothing folds, ``[]`` when all does)."""
        op, attrs, ins = node.op_type, _attrs(node), list(node.input)
        vec = self.vectors
        if op == "Shape" and ins[0] in self.shapes:
            dims = self.shapes[ins[0]]
            picked = _indices(len(dims), attrs.get("start", 0), attrs.get("end", len(dims)), 1)
            if picked:
                self.shape_of[node.output[0]] = (ins[0], picked[0])
            return [] if self.fold_vector(node, [dims[i] for i in picked]) else [node]
        if op == "Concat" and all(i in vec and i not in self.scalars for i in ins):
            return [] if self.fold_vector(node, [v for i in ins for v in vec[i]]) else [node]
        if op == "Identity" and ins[0] in vec:
            return [] if self.fold_vector(node, vec[ins[0]], ins[0] in self.scalars) else [node]
        if op == "Squeeze" and ins[0] in vec and ins[0] not in self.scalars and len(vec[ins[0]]) == 1:
            return [] if self.fold_vector(node, vec[ins[0]], scalar=True) else [node]
        if op == "Unsqueeze" and ins[0] in self.scalars:
            return [] if self.fold_vector(node, vec[ins[0]]) else [node]
        if op == "Gather" and ins[0] in vec and ins[1] in self.consts and attrs.get("axis", 0) == 0:
            index = self.consts[ins[1]]
            if index.ndim <= 1 and ins[0] not in self.scalars:
                values = vec[ins[0]]
                positions = [int(i) % len(values) for i in index.reshape(-1)]
                if self.fold_vector(node, [values[i] for i in positions], scalar=index.ndim == 0):
                    return []
                return self.sub_shape(node, positions, squeeze=index.ndim == 0)
        if op == "Slice":
            params = self.params(node)
            if params is None:
                return [node]
            starts, ends, axes, steps = params
            if ins[0] in vec and ins[0] not in self.scalars and axes in ([0], [-1]):
                values = vec[ins[0]]
                picked = _indices(len(values), starts[0], ends[0], steps[0])
                return [] if self.fold_vector(node, [values[i] for i in picked]) else self.sub_shape(node, picked)
            return self.slice_to_gather(node, params)
        if op == "Reshape" and ins[1] in vec and ins[1] not in self.consts and not attrs.get("allowzero", 0):
            target = vec[ins[1]]
            dynamic = [v for v in target if not isinstance(v, int)]
            if len(dynamic) == 1 and not any(isinstance(v, int) and v in (0, -1) for v in target):
                name = self.fresh(f"{ins[1]}_static")
                self.constant(name, np.array([v if isinstance(v, int) else -1 for v in target], dtype=np.int64))
                self.folded += 1
                return [helper.make_node("Reshape", [ins[0], name], list(node.output), name=node.name)]
        return [node]

    def sub_shape(self, node: onnx.NodeProto, positions: list[int], squeeze: bool = False) -> list[onnx.NodeProto]:
        """``node`` picks the contiguous ``positions`` of a Shape output: read them with one
        ``Shape(x, start, end)`` instead (a Squeeze after it for a scalar Gather)."""
        source = self.shape_of.get(node.input[0])
        if source is None or not positions or positions != list(range(positions[0], positions[-1] + 1)):
            return [node]
        tensor, offset = source
        start, end = offset + positions[0], offset + positions[-1] + 1
        self.folded += 1
        if not squeeze:
            self.shape_of[node.output[0]] = (tensor, start)
            return [helper.make_node("Shape", [tensor], list(node.output), name=node.name, start=start, end=end)]
        vector = self.fresh(f"{node.output[0]}_1d")
        axes = self.fresh(f"{node.output[0]}_axes")
        self.constant(axes, np.array([0], dtype=np.int64))
        return [
            helper.make_node("Shape", [tensor], [vector], name=self.fresh(f"{node.name}_shape"), start=start, end=end),
            helper.make_node("Squeeze", [vector, axes], list(node.output), name=node.name),
        ]

    def slice_to_gather(self, node: onnx.NodeProto, params: list[list[int]]) -> list[onnx.NodeProto]:
        dims = self.shapes.get(node.input[0])
        starts, ends, axes, steps = params
        if dims is None or not all(isinstance(dims[a % len(dims)], int) for a in axes):
            return [node]
        gathers: list[tuple[int, list[int]]] = []
        for start, end, axis, step in zip(starts, ends, axes, steps):
            size = int(dims[axis % len(dims)])
            picked = _indices(size, start, end, step)
            if picked != list(range(size)):
                gathers.append((axis % len(dims), picked))
        if not gathers:
            return [helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)]
        nodes, current = [], node.input[0]
        for k, (axis, picked) in enumerate(gathers):
            index = self.fresh(f"{node.output[0]}_indices")
            self.constant(index, np.array(picked, dtype=np.int64))
            out = node.output[0] if k == len(gathers) - 1 else self.fresh(f"{node.output[0]}_axis{axis}")
            name = node.name if k == len(gathers) - 1 else self.fresh(f"{node.name}_axis{axis}")
            nodes.append(helper.make_node("Gather", [current, index], [out], axis=axis, name=name))
            current = out
        self.folded += 1
        return nodes


def fold_static_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``model``'s main graph in place (see the module docstring); returns it.

    Dead nodes are left for the caller's cleanup (graphsurgeon ``cleanup``)."""
    folder = _Folder(model)
    nodes: list[onnx.NodeProto] = []
    for node in folder.graph.node:
        nodes.extend(folder.rewrite(node))
    del folder.graph.node[:]
    folder.graph.node.extend(nodes)
    folder.graph.initializer.extend(folder.initializers)
    logger.debug("fold_static_shapes: %d values folded", folder.folded)
    return model
