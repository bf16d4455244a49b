"""Capture a timm ViT as a ``torch.fx.GraphModule`` and find its transformer blocks.

Capture is symbolic (module/function level, timm's no-trace lists), so token counts stay
``x.shape`` expressions and passes can change them. Blocks are found structurally: a block is a
``scaled_dot_product_attention`` call followed by two residual adds, the first of which
consumes the attention output (the attention residual) and the second of which consumes the
first (the MLP residual). Module paths only name what was found.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..errors import TokcompileError

SDPA = F.scaled_dot_product_attention
ADD_TARGETS = (operator.add, torch.add)


class _ViTTracer(fx.Tracer):
    def __init__(self) -> None:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)


def capture(model: torch.nn.Module) -> fx.GraphModule:
    """Trace ``model(x)`` (no mask, not causal) to a GraphModule with fused attention kept on.

    The GraphModule owns a copy of the parameters: passes (precision casts) never touch ``model``.
    """
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            # Passes read q and k at the scaled_dot_product_attention call (DESIGN.md §3).
            setattr(m, "fused_attn", True)  # noqa: B010 (a timm flag nn.Module's typing does not know)
    tracer = _ViTTracer()
    try:
        graph = tracer.trace(model, concrete_args={"attn_mask": None, "is_causal": False})
    except Exception as exc:
        raise TokcompileError(
            f"{type(model).__name__} cannot be captured with torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); only timm VisionTransformer-style models are supported"
        ) from None
    # concrete_args leave placeholders with guard asserts behind; the graph takes images only.
    guards: set[fx.Node] = set()
    frontier = [n for n in graph.nodes if n.op == "placeholder"][1:]
    while frontier:
        node = frontier.pop()
        if node not in guards:
            guards.add(node)
            frontier.extend(node.users)
    for node in reversed(list(graph.nodes)):
        if node in guards:
            graph.erase_node(node)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__ + "Graph")
    return gm


@dataclass
class BlockNodes:
    """The nodes of one transformer block that passes rewrite."""

    index: int
    path: str  # module path, for messages (e.g. "blocks.3")
    sdpa: fx.Node
    attn_residual: fx.Node  # x + attn(norm1(x)): EViT/ToMe reduce here, before the MLP
    mlp_residual: fx.Node  # the block output

    @property
    def q(self) -> fx.Node:
        return self.sdpa.args[0]  # type: ignore[return-value]

    @property
    def k(self) -> fx.Node:
        return self.sdpa.args[1]  # type: ignore[return-value]


def module_path(node: fx.Node, depth_from_leaf: int = 0) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).keys())
    if len(stack) <= depth_from_leaf:
        return ""
    return stack[-1 - depth_from_leaf]


def _is_add(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in ADD_TARGETS


def _first_add_user(start: fx.Node, order: dict[fx.Node, int]) -> fx.Node | None:
    """The earliest add reachable from ``start`` through single-input ops or adds of it."""
    frontier = [start]
    seen: set[fx.Node] = set()
    best: fx.Node | None = None
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if _is_add(user):
                if best is None or order[user] < order[best]:
                    best = user
            else:
                frontier.append(user)
    return best


def _is_ancestor(a: fx.Node, b: fx.Node, order: dict[fx.Node, int]) -> bool:
    """Whether ``b`` depends on ``a`` (or is ``a``)."""
    stack, seen = [b], set()
    while stack:
        node = stack.pop()
        if node is a:
            return True
        if node in seen or order[node] < order[a]:
            continue
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return False


def _residual_operand(add: fx.Node, order: dict[fx.Node, int]) -> fx.Node | None:
    """For ``add(a, b)`` with ``b = f(a)`` (a residual connection), return ``a``."""
    a, b = (x for x in add.args[:2])
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    if _is_ancestor(a, b, order):
        return a
    return b if _is_ancestor(b, a, order) else None


def _sequential(sdpa: fx.Node, attn_res: fx.Node, mlp_res: fx.Node, order: dict[fx.Node, int]) -> bool:
    """x + attn(x) whose sum feeds both the MLP and its residual: a pre/post-norm ViT block."""
    skip1 = _residual_operand(attn_res, order)
    skip2 = _residual_operand(mlp_res, order)
    return (
        skip1 is not None
        and _is_ancestor(skip1, sdpa, order)
        and skip2 is not None
        and _is_ancestor(attn_res, skip2, order)
    )


def find_blocks(gm: fx.GraphModule) -> list[BlockNodes]:
    """Transformer blocks in graph order. Raises TokcompileError when none are found, or when a
    block is not sequential (attention residual, then an MLP that reads it, then the MLP
    residual), since token reduction between attention and MLP is undefined there."""
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    sdpas = [n for n in nodes if n.op == "call_function" and n.target is SDPA]
    blocks: list[BlockNodes] = []
    for i, node in enumerate(sdpas):
        attn_res = _first_add_user(node, order)
        mlp_res = _first_add_user(attn_res, order) if attn_res is not None else None
        # The residual add lives in the block's own scope; the SDPA may sit in a submodule.
        block_path = module_path(attn_res) if attn_res is not None else module_path(node)
        next_sdpa = order[sdpas[i + 1]] if i + 1 < len(sdpas) else len(nodes)
        if (
            attn_res is None
            or mlp_res is None
            or order[mlp_res] > next_sdpa
            or not _sequential(node, attn_res, mlp_res, order)
        ):
            raise TokcompileError(
                f"block '{block_path}' is not a sequential attention → MLP block (e.g. parallel attention "
                "and MLP); token reduction between them is undefined, so this model is not supported"
            )
        blocks.append(BlockNodes(len(blocks), block_path, node, attn_res, mlp_res))
    if not blocks:
        raise TokcompileError(
            "no transformer block (scaled_dot_product_attention followed by residual adds) was "
            "found in the traced model; only timm VisionTransformer-style models are supported"
        )
    return blocks
