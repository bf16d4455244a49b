"""Helpers for the pass tests: a method's passes on a zoo model, call counts, no-op checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.fx as fx

from tokcompile.methods import get_method, resolve_config
from tokcompile.models.tracing import capture
from tokcompile.passes.manager import Pass, PassContext, run_passes


def calls(gm: fx.GraphModule, target: object) -> int:
    """Number of ``call_function`` nodes of ``target``."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


def method_graph(
    models: Any,
    method: str,
    name: str = "test_vit",
    passes: Optional[Sequence[Pass]] = None,
    precision: Optional[str] = None,
    **params: Any,
) -> tuple[fx.GraphModule, PassContext]:
    """Capture zoo model ``name`` and run ``method``'s pipeline (or ``passes``) with debug linting.

    ``params`` go to the method's config; ``precision`` (for cast_precision) to ``ctx.info``; the
    method state is prepared as ``apply_method`` prepares it for a checkpoint without method
    tensors. ``ctx.info["modified"]`` is the run's PassResult.modified.
    """
    model, spec = models(name)
    m = get_method(method)
    config = resolve_config(m, spec, params)
    ctx = PassContext(spec, config, layers=tuple(getattr(config, "layers", ())), debug=True)
    if m.prepare_state is not None:
        ctx.method_state, warnings = m.prepare_state(spec, config, {})
        ctx.info["method_warnings"] = warnings
    if precision is not None:
        ctx.info["precision"] = precision
    result = run_passes(capture(model), m.pipeline if passes is None else passes, ctx)
    ctx.info["modified"] = result.modified
    return result.graph_module, ctx


def _outputs(gm: fx.GraphModule, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = gm(images)
    return out if isinstance(out, tuple) else (out,)


def assert_noop(
    gm: fx.GraphModule, passes: Sequence[Pass], ctx: PassContext, images: Optional[torch.Tensor] = None
) -> fx.GraphModule:
    """Run ``passes``; they must report no change and leave the code and node count as they were
    (and, given ``images``, every output bit for bit)."""
    code, nodes = gm.code, len(gm.graph.nodes)
    before = _outputs(gm, images) if images is not None else None
    result = run_passes(gm, passes, ctx)
    assert result.modified is False, [getattr(p, "__name__", p) for p in passes]
    assert result.graph_module.code == code and len(result.graph_module.graph.nodes) == nodes
    if before is not None:
        after = _outputs(result.graph_module, images)
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    return result.graph_module
