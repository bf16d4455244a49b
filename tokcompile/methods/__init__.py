"""Token-reduction methods: name → (config type, ordered pass tuple).

A method is an explicit pipeline; ``methods/<name>.py`` is the only place its order lives.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TokcompileError
from . import adavit, ats, avit, evit, tome


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config: Any  # dataclass with resolve(spec, **params) and params()
    pipeline: tuple[Callable, ...]
    staged: bool = False  # per-image token counts: split into stages, bucketed at run time


METHODS: dict[str, Method] = {
    "none": Method("none", "dense model, no token reduction (the baseline)", None, ()),
    "evit": Method(
        "evit",
        "EViT: keep top-k tokens by CLS attention, fuse the rest (ICLR'22)",
        evit.EvitConfig,
        evit.PIPELINE,
    ),
    "tome": Method(
        "tome",
        "ToMe: merge r similar tokens per block by bipartite matching, proportional attention (ICLR'23)",
        tome.TomeConfig,
        tome.PIPELINE,
    ),
    "ats": Method(
        "ats",
        "ATS: adaptive token sampling, a per-image token count; staged, bucketed execution (ECCV'22)",
        ats.AtsConfig,
        ats.PIPELINE,
        staged=True,
    ),
    "avit": Method(
        "avit",
        "A-ViT: adaptive per-token halting; halted tokens removed; staged, bucketed execution (CVPR'22)",
        avit.AvitConfig,
        avit.PIPELINE,
        staged=True,
    ),
    "adavit": Method(
        "adavit",
        "AdaViT: per-image head, sub-layer and token skipping by decision heads; staged, bucketed (CVPR'22)",
        adavit.AdavitConfig,
        adavit.PIPELINE,
        staged=True,
    ),
}


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TokcompileError(f"unknown method '{name}'{hint} (known: {', '.join(METHODS)}; see 'tokcompile list methods')")


def resolve_config(method: Method, spec: Any, params: dict[str, Any]) -> Any:
    """The method's config from user parameters (None = default); rejects unknown parameters."""
    given = {k: v for k, v in params.items() if v is not None}
    if method.config is None:
        if given:
            raise TokcompileError(f"method '{method.name}' takes no parameters, got {', '.join(given)}")
        return None
    import dataclasses

    known = {f.name for f in dataclasses.fields(method.config)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise TokcompileError(
            f"method '{method.name}' has no parameter {', '.join(unknown)} (it takes {', '.join(sorted(known))})"
        )
    return method.config.resolve(spec, **given)


def apply_method(
    model: Any, spec: Any, method: Method, config: Any, precision: str, debug: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Capture ``model`` and run the method's pipeline, then the precision pass.

    Returns (GraphModule, info) where info holds what passes recorded (tokens, outputs, ...).
    """
    import logging

    from ..models.tracing import capture
    from ..passes.annotate_tokens import annotate_tokens
    from ..passes.cast_precision import cast_precision
    from ..passes.manager import PassContext, run_passes
    from ..passes.output_features import output_features
    from ..passes.split_stages import split_stages

    layers = tuple(getattr(config, "layers", ()))
    debug = debug or logging.getLogger("tokcompile").isEnabledFor(logging.DEBUG)
    ctx = PassContext(spec=spec, config=config, layers=layers, debug=debug)
    ctx.info["precision"] = precision
    pipeline = method.pipeline or (annotate_tokens,)
    gm = run_passes(capture(model), (*pipeline, output_features, cast_precision, split_stages), ctx).graph_module
    return gm, ctx.info
