"""Token-reduction methods: name → (config type, ordered pass tuple, CLI options, ...).

A method is an explicit pipeline; ``methods/<name>.py`` is the only place its order lives, next
to its config, its ``OPTIONS`` (the CLI flags) and what else it knows: its checkpoint layout
(``checkpoint_adapter``, ``prepare_state``) and how ``tokcompile show`` labels its outputs
(``LEGEND``). Importing this package does not import torch: pipelines load on first use, so the
CLI builds its flags from ``METHODS`` cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import TokcompileError
from . import adavit, ats, avit, evit, tome
from .legend import Legend
from .options import Option

if TYPE_CHECKING:
    import torch

    from ..models import CheckpointAdapter, ModelSpec
    from ..passes.manager import Pass

# (spec, config, method tensors the checkpoint carried) → (tensors the method's passes read, warnings)
StatePreparer = Callable[["ModelSpec", Any, Mapping[str, "torch.Tensor"]], tuple[dict[str, "torch.Tensor"], list[str]]]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config: Any  # dataclass with resolve(spec, **params) and params()
    passes: Optional[Callable[[], tuple[Pass, ...]]] = None  # the pipeline, imported on first use
    staged: bool = False  # per-image token counts: split into stages, bucketed at run time
    options: tuple[Option, ...] = ()  # the config's parameters as CLI flags
    # a checkpoint in the method's official layout → (timm state dict, method tensors); see
    # adapt_checkpoint
    checkpoint_adapter: Optional[CheckpointAdapter] = None
    # method tensors → what its passes read in ctx.method_state (e.g. AdaViT's decision heads)
    prepare_state: Optional[StatePreparer] = None
    legend: Optional[Legend] = None  # how `tokcompile show` labels its kept_ids_<block> outputs

    @property
    def pipeline(self) -> tuple[Pass, ...]:
        """The passes in order; () for the dense model."""
        return self.passes() if self.passes is not None else ()


METHODS: dict[str, Method] = {
    "none": Method("none", "dense model, no token reduction (the baseline)", None),
    "evit": Method(
        "evit",
        "EViT: keep top-k tokens by CLS attention, fuse the rest (ICLR'22)",
        evit.EvitConfig,
        evit.pipeline,
        options=evit.OPTIONS,
        legend=evit.LEGEND,
    ),
    "tome": Method(
        "tome",
        "ToMe: merge r similar tokens per block by bipartite matching, proportional attention (ICLR'23)",
        tome.TomeConfig,
        tome.pipeline,
        options=tome.OPTIONS,
    ),
    "ats": Method(
        "ats",
        "ATS: adaptive token sampling, a per-image token count; staged, bucketed execution (ECCV'22)",
        ats.AtsConfig,
        ats.pipeline,
        staged=True,
        options=ats.OPTIONS,
        legend=ats.LEGEND,
    ),
    "avit": Method(
        "avit",
        "A-ViT: adaptive per-token halting; halted tokens removed; staged, bucketed execution (CVPR'22)",
        avit.AvitConfig,
        avit.pipeline,
        staged=True,
        options=avit.OPTIONS,
        legend=avit.LEGEND,
    ),
    "adavit": Method(
        "adavit",
        "AdaViT: per-image head, sub-layer and token skipping by decision heads; staged, bucketed (CVPR'22)",
        adavit.AdavitConfig,
        adavit.pipeline,
        staged=True,
        options=adavit.OPTIONS,
        checkpoint_adapter=adavit.checkpoint_adapter,
        prepare_state=adavit.prepare_state,
        legend=adavit.LEGEND,
    ),
}


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TokcompileError(f"unknown method '{name}'{hint} (known: {', '.join(METHODS)}; see 'tokcompile list methods')")


def resolve_config(method: Method, spec: Any, params: dict[str, Any]) -> Any:
    """The method's config from user parameters (None = default); rejects unknown parameters.

    Known parameters are the keywords of the config's ``resolve`` (its fields, and old names that
    bundles built before a rename still carry in their manifests)."""
    given = {k: v for k, v in params.items() if v is not None}
    if method.config is None:
        if given:
            raise TokcompileError(f"method '{method.name}' takes no parameters, got {', '.join(given)}")
        return None
    accepted = set(inspect.signature(method.config.resolve).parameters) - {"spec"}
    fields = {f.name for f in dataclasses.fields(method.config)}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise TokcompileError(
            f"method '{method.name}' has no parameter {', '.join(unknown)} (it takes {', '.join(sorted(fields))})"
        )
    return method.config.resolve(spec, **given)


def adapt_checkpoint(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint file's state dict → (timm state dict, method tensors), through every method's
    ``checkpoint_adapter`` in turn (each passes other layouts through unchanged).

    Every method gets the same adaptation, whatever the build's method: a checkpoint in a
    method's layout (AdaViT's) also builds the dense model and other methods on its backbone (the
    dense twin of ``compare``/``eval``, ``sweep``'s baselines), with the same weights digest.
    ``models.create_model(..., checkpoint_adapter=adapt_checkpoint)``."""
    extra: dict[str, torch.Tensor] = {}
    for method in METHODS.values():
        if method.checkpoint_adapter is not None:
            state, found = method.checkpoint_adapter(state)
            extra.update(found)
    return state, extra


def apply_method(
    model: Any,
    spec: Any,
    method: Method,
    config: Any,
    precision: str,
    debug: bool = False,
    method_state: Optional[Mapping[str, torch.Tensor]] = None,
) -> tuple[Any, dict[str, Any]]:
    """Capture ``model`` and run the method's pipeline, then the precision pass.

    ``method_state``: the method tensors ``models.create_model`` read from the checkpoint
    (``LoadedModel.method_state``); the method's ``prepare_state`` turns them into what its passes
    read (``PassContext.method_state``), with warnings (``info["method_warnings"]``).
    Returns (GraphModule, info) where info holds what passes recorded (tokens, outputs, ...).
    """
    from ..models.tracing import capture
    from ..passes.annotate_tokens import annotate_tokens
    from ..passes.cast_precision import cast_precision
    from ..passes.manager import PassContext, run_passes
    from ..passes.output_features import output_features
    from ..passes.split_stages import split_stages

    layers = tuple(getattr(config, "layers", ()))
    debug = debug or logging.getLogger("tokcompile").isEnabledFor(logging.DEBUG)
    ctx = PassContext(spec=spec, config=config, layers=layers, debug=debug)
    if method.prepare_state is not None:
        ctx.method_state, warnings = method.prepare_state(spec, config, dict(method_state or {}))
        if warnings:
            ctx.info["method_warnings"] = list(warnings)
    ctx.info["precision"] = precision
    pipeline = method.pipeline or (annotate_tokens,)
    gm = run_passes(capture(model), (*pipeline, output_features, cast_precision, split_stages), ctx).graph_module
    return gm, ctx.info
