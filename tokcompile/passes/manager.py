"""Pass infrastructure: context, result, and the manager that runs an ordered pass tuple.

A pass is ``def name(gm: fx.GraphModule, ctx: PassContext) -> PassResult``. The manager runs
the passes in order, lints the graph after each one when ``ctx.debug`` is set, recompiles, and
names the failing pass (and the ones before it) when one raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx

from ..errors import TokcompileError
from ..models import ModelSpec

logger = logging.getLogger(__name__)


@dataclass
class PassContext:
    """What passes may read (spec, method config, method state) and record (``info``, for
    manifest/report).

    layers: 0-based block indices the method acts on.
    method_state: tensors a method's passes read besides the model's parameters, by the names
        those passes document (AdaViT's decision heads, ``insert_adavit_gates``); prepared by
        ``methods.apply_method`` from what the checkpoint carried (``Method.prepare_state``).
    info: facts passes leave for later stages, e.g. ``info["token_counts"]``.
    """

    spec: ModelSpec
    config: Any = None
    layers: tuple[int, ...] = ()
    debug: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    method_state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


Pass = Callable[[fx.GraphModule, PassContext], PassResult]


def redirect_uses(
    old: fx.Node, new: fx.Node, keep: Iterable[fx.Node] = (), keep_targets: Iterable[object] = ()
) -> None:
    """Make the users of ``old`` read ``new``, except the nodes in ``keep`` (those that compute
    ``new`` from ``old``) and calls of ``keep_targets``."""
    kept, targets = set(keep), tuple(keep_targets)

    def redirect(user: fx.Node) -> bool:
        return user not in kept and user.target not in targets

    old.replace_all_uses_with(new, delete_user_cb=redirect)


class PassError(Exception):
    """An internal failure inside a pass; the message names the pass and the history."""


def run_passes(
    gm: fx.GraphModule, passes: Sequence[Pass], ctx: Optional[PassContext] = None, *, spec: Optional[ModelSpec] = None
) -> PassResult:
    """Run ``passes`` in order on ``gm``; returns the final module and whether any pass changed it."""
    if ctx is None:
        if spec is None:
            raise ValueError("run_passes needs a PassContext or a ModelSpec")
        ctx = PassContext(spec=spec)
    history: list[str] = []
    modified = False
    for p in passes:
        name = getattr(p, "__name__", repr(p))
        try:
            result = p(gm, ctx)
            gm = result.graph_module
            if ctx.debug:
                gm.graph.lint()
            gm.recompile()
        except TokcompileError:
            raise
        except Exception as exc:
            done = " → ".join(history) or "(none)"
            raise PassError(f"pass '{name}' failed after [{done}]: {type(exc).__name__}: {exc}") from exc
        history.append(name)
        modified |= result.modified
    ctx.info["pass_history"] = history
    return PassResult(gm, modified)
