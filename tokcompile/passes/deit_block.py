"""Recognise a DeiT block by graph structure, for rewrites that replace whole blocks (AdaViT).

From a block's SDPA and residual adds (``models.tracing.find_blocks``), a DeiT block is:

    x ─ F.layer_norm ─ Linear (qkv) ─ reshape/permute/unbind ─ SDPA ─ reshape ─ Linear (proj) ─ + x
      ─ F.layer_norm ─ Linear (fc1) ─ GELU (exact) ─ Linear (fc2) ─ + (attention residual)

with no other parameter (timm traces LayerScale and its qk-/extra norms through, so their
get_attr parameters show them) and no other module than Identity or Dropout. Module names are
never matched (passes/README.md invariant 5); they only name what was found in messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..errors import TokcompileError
from ..models.tracing import BlockNodes, module_path

SUPPORTED = "(no qk-norm, LayerScale or extra norms)"
IDENTITY_MODULES = (torch.nn.Identity, torch.nn.Dropout)  # what a DeiT block may call besides its own


@dataclass
class DeitBlock:
    """The parts of a DeiT block a rewrite reads: its input, its norms (weight, bias, eps of each
    F.layer_norm call; weight and bias are get_attr nodes or None) and the qualified names of its
    four Linear modules."""

    x: fx.Node
    norm1: tuple[Any, Any, float]
    norm2: tuple[Any, Any, float]
    qkv: str
    proj: str
    fc1: str
    fc2: str


def _layer_norm_args(node: fx.Node) -> tuple[fx.Node, Any, Any, float]:
    """(input, weight, bias, eps) of an F.layer_norm call node."""
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    args: dict[str, Any] = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args["input"], args.get("weight"), args.get("bias"), float(args.get("eps", 1e-5))


def _is_layer_norm(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is F.layer_norm


def _ancestors(node: fx.Node, stop: Optional[fx.Node] = None) -> list[fx.Node]:
    """Nodes ``node`` depends on, in graph order, not looking past ``stop`` (excluded)."""
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n not in seen and n is not stop:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return [n for n in node.graph.nodes if n in seen]


def _between(nodes: list[fx.Node], start: fx.Node, end: fx.Node) -> list[fx.Node]:
    """The nodes of ``nodes`` that depend on ``start`` and that ``end`` depends on (both excluded)."""
    after: set[fx.Node] = {start}
    for n in nodes:
        if any(i in after for i in n.all_input_nodes):
            after.add(n)
    before: set[fx.Node] = {end}
    for n in reversed(nodes):
        if n in before:
            before.update(n.all_input_nodes)
    return [n for n in nodes if n in after and n in before and n is not start and n is not end]


def _calls(gm: fx.GraphModule, node: fx.Node, kind: Union[type, tuple[type, ...]]) -> bool:
    """Whether ``node`` calls a submodule that is a ``kind``."""
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), kind)


def _modules(gm: fx.GraphModule, nodes: list[fx.Node], kind: type) -> list[fx.Node]:
    return [n for n in nodes if _calls(gm, n, kind)]


def deit_block(gm: fx.GraphModule, block: BlockNodes, method: str) -> DeitBlock:
    """The parts of ``block`` when it is a DeiT block, found by graph structure; a one-line
    TokcompileError naming ``method`` and what differs otherwise. Module paths only name what was
    found (passes/README.md invariant 5)."""
    where = block.path or f"block {block.index}"
    not_deit = TokcompileError(
        f"method '{method}' rewrites DeiT-style blocks (norm1 → attn.qkv ... norm2 → mlp.fc1); block '{where}' is not one"
    )
    # q, k, v come from one Linear (qkv) whose input is a LayerNorm of the block input, which is
    # also the attention residual's skip operand (a pre-norm block).
    qkv_node = next((n for n in reversed(_ancestors(block.sdpa)) if _calls(gm, n, torch.nn.Linear)), None)
    if qkv_node is None or not _is_layer_norm(qkv_node.args[0]):
        raise not_deit
    ln1: Any = qkv_node.args[0]
    x = _layer_norm_args(ln1)[0]
    if x not in block.attn_residual.args[:2]:
        raise not_deit
    nodes = [*_ancestors(block.mlp_residual, stop=x), block.mlp_residual]  # the block after x, in graph order
    attn_out = _between(nodes, block.sdpa, block.attn_residual)
    mlp = _between(nodes, block.attn_residual, block.mlp_residual)
    proj, linears = _modules(gm, attn_out, torch.nn.Linear), _modules(gm, mlp, torch.nn.Linear)
    ln2: Any = linears[0].args[0] if linears else None
    if (
        len(_modules(gm, nodes, torch.nn.Linear)) != 4
        or len(proj) != 1
        or len(linears) != 2
        or not _is_layer_norm(ln2)
        or _layer_norm_args(ln2)[0] is not block.attn_residual
        or block.attn_residual not in block.mlp_residual.args[:2]
    ):
        raise not_deit
    fc1, fc2 = linears
    # Nothing else with parameters: timm traces LayerScale and its LayerNorm through, so only
    # their parameters (get_attr) show that they are there.
    norm_params = {a for ln in (ln1, ln2) for a in _layer_norm_args(ln)[1:3] if isinstance(a, fx.Node)}
    for node in nodes:
        extra_norm = _is_layer_norm(node) and node not in (ln1, ln2)
        if (node.op == "get_attr" and node not in norm_params) or extra_norm:
            target = str(node.target) if node.op == "get_attr" else module_path(node) or node.name
            owner = target.rpartition(".")[0] if node.op == "get_attr" else target
            what = f"a layer with parameter '{target}'" if node.op == "get_attr" else "a LayerNorm"
            raise TokcompileError(
                f"method '{method}' supports DeiT blocks as its official code defines them; '{owner}' is "
                f"{what} {SUPPORTED}"
            )
    acts = [n for n in _between(nodes, fc1, fc2) if n.op == "call_module" and not _calls(gm, n, IDENTITY_MODULES)]
    act = gm.get_submodule(str(acts[0].target)) if len(acts) == 1 else None
    if not (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
        name = acts[0].target if acts else f"{where} MLP activation"
        raise TokcompileError(
            f"method '{method}' needs the exact GELU MLP of DeiT; '{name}' is {act if act is not None else 'missing'}"
        )
    for node in nodes:
        if (
            node.op == "call_module"
            and node not in (qkv_node, *proj, fc1, fc2, *acts)
            and not _calls(gm, node, IDENTITY_MODULES)
        ):
            module = gm.get_submodule(str(node.target))
            raise TokcompileError(
                f"method '{method}' supports DeiT blocks as its official code defines them; '{node.target}' is "
                f"{type(module).__name__} {SUPPORTED}"
            )
    return DeitBlock(
        x,
        _layer_norm_args(ln1)[1:],
        _layer_norm_args(ln2)[1:],
        str(qkv_node.target),
        str(proj[0].target),
        str(fc1.target),
        str(fc2.target),
    )
