"""ATS (Fayyaz et al., ECCV'22): adaptive token sampling, a per-image token count.

Semantics: methods-reference.md §3.2 per image (the official batched code is batch-dependent,
§3.6; tokcompile never lets padding reach the CDF). Defaults from the official DeiT-S config:
ATS in blocks 3..11 of 12 (scaled for other depths), budget K = all tokens of the network input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import TokcompileError
from .layers import LayersSpec, parse_layers
from .legend import Legend
from .options import Option

# ATS (methods-reference.md §3, official DeiT-S config): sampling in blocks 3..11 of 12 (the same
# share of other depths), budget K = every token of the network input.
DEFAULT_FIRST_LAYER_12 = 3

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..passes.manager import Pass


def pipeline() -> tuple[Pass, ...]:
    """The passes, in order (imported on use: the method registry loads without torch)."""
    from ..passes.annotate_tokens import annotate_tokens
    from ..passes.insert_ats_sample import insert_ats_sample

    return (insert_ats_sample, annotate_tokens)


def default_layers(depth: int) -> tuple[int, ...]:
    """Blocks 3..11 for 12 blocks: from a quarter of the depth to the end."""
    return tuple(range(round(DEFAULT_FIRST_LAYER_12 * depth / 12), depth))


@dataclass(frozen=True)
class AtsConfig:
    layers: tuple[int, ...]
    max_tokens: tuple[int, ...]  # budget K per layer in ``layers`` (CLS included)

    @classmethod
    def resolve(
        cls, spec: ModelSpec, layers: Optional[LayersSpec] = None, max_tokens: Optional[Any] = None
    ) -> AtsConfig:
        if not spec.has_class_token:
            raise TokcompileError(
                f"method 'ats' samples tokens by CLS attention, but '{spec.name}' has no class token "
                f"(global_pool='{spec.global_pool}'); use a model with a CLS token"
            )
        if spec.num_prefix_tokens != 1:
            raise TokcompileError(
                f"method 'ats' is defined for one prefix token (CLS); '{spec.name}' has {spec.num_prefix_tokens} "
                "(distillation/register tokens are not supported by ATS)"
            )
        chosen = default_layers(spec.depth) if layers is None else parse_layers(layers, spec.depth)
        budgets = _budgets(max_tokens, len(chosen), spec.num_tokens)
        return cls(chosen, budgets)

    def params(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "max_tokens": list(self.max_tokens)}


def _budgets(value: Any, count: int, n_ref: int) -> tuple[int, ...]:
    """--max-tokens: one K for every layer or a comma list, one per layer; default all tokens."""
    if value is None:
        return (n_ref,) * count
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        budgets = [int(str(v).strip()) for v in items]
    except ValueError:
        raise TokcompileError(f"--max-tokens must be an integer or a comma list of integers, got '{value}'") from None
    if len(budgets) == 1:
        budgets *= count
    if len(budgets) != count:
        raise TokcompileError(f"--max-tokens lists {len(budgets)} budgets for {count} ATS layers; give one or {count}")
    if any(k < 2 for k in budgets):
        raise TokcompileError(f"--max-tokens must be ≥ 2 (CLS plus one token), got {budgets}")
    return tuple(min(k, n_ref) for k in budgets)


OPTIONS = (
    Option(
        "layers",
        "0-based blocks that sample, e.g. 3,4,5",
        f"{DEFAULT_FIRST_LAYER_12}..11 of 12 blocks, scaled to depth",
        metavar="BLOCKS",
    ),
    Option("max_tokens", "budget K per ATS block (CLS included), one value or a list", "all tokens", metavar="K"),
)

LEGEND = Legend(kept="sampled (kept)", dropped="not sampled: dropped by this layer")
