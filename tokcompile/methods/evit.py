"""EViT (Liang et al., ICLR'22): keep the top-k tokens by CLS attention, fuse the rest.

Semantics follow methods-reference.md §1; defaults from the official ``main.py``:
blocks (3, 6, 9) of 12 (scaled for other depths), keep rate 0.7, token fusion on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import TokcompileError
from .layers import LayersSpec, parse_layers
from .legend import Legend
from .options import Option, number, on_off

# EViT (methods-reference.md §1.1): drop_loc=(3, 6, 9) for 12 blocks, keep 0.7, fuse on.
DEFAULT_KEEP_RATE = 0.7
DEFAULT_LAYERS_12 = (3, 6, 9)
DEFAULT_FUSE = True

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..passes.manager import Pass


def pipeline() -> tuple[Pass, ...]:
    """The passes, in order (imported on use: the method registry loads without torch)."""
    from ..passes.annotate_tokens import annotate_tokens
    from ..passes.capture_cls_attention import capture_cls_attention
    from ..passes.insert_evit_select import insert_evit_select
    from ..passes.output_kept_indices import output_kept_indices

    return (capture_cls_attention, insert_evit_select, output_kept_indices, annotate_tokens)


def default_layers(depth: int) -> tuple[int, ...]:
    """(3, 6, 9) for 12 blocks; the same relative positions for other depths."""
    if depth == 12:
        return DEFAULT_LAYERS_12
    return tuple(sorted({min(depth - 1, max(0, round(i * depth / 12))) for i in DEFAULT_LAYERS_12}))


@dataclass(frozen=True)
class EvitConfig:
    keep_rate: float
    layers: tuple[int, ...]
    fuse: bool

    @classmethod
    def resolve(
        cls,
        spec: ModelSpec,
        keep_rate: Optional[float] = None,
        layers: Optional[LayersSpec] = None,
        fuse: Optional[bool] = None,
    ) -> EvitConfig:
        """Fill defaults and validate against the model; raises TokcompileError on bad values."""
        if not spec.has_class_token:
            raise TokcompileError(
                f"method 'evit' scores tokens by CLS attention, but '{spec.name}' has no class token "
                f"(global_pool='{spec.global_pool}'); use a model with a CLS token"
            )
        keep = DEFAULT_KEEP_RATE if keep_rate is None else keep_rate
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
            raise TokcompileError(f"--keep-rate must be in (0, 1], got {keep_rate}")
        chosen = default_layers(spec.depth) if layers is None else parse_layers(layers, spec.depth)
        return cls(float(keep), chosen, DEFAULT_FUSE if fuse is None else bool(fuse))

    def params(self) -> dict[str, Any]:
        return {"keep_rate": self.keep_rate, "layers": list(self.layers), "fuse": self.fuse}


OPTIONS = (
    Option("keep_rate", "fraction of tokens kept per layer, in (0, 1]", number(DEFAULT_KEEP_RATE), float),
    Option(
        "layers",
        "0-based blocks that reduce, e.g. 3,6,9",
        f"{','.join(map(str, DEFAULT_LAYERS_12))} scaled to depth",
        metavar="BLOCKS",
    ),
    Option("fuse", "fuse the dropped tokens into one extra token", on_off(DEFAULT_FUSE), boolean=True),
)

LEGEND = Legend(fused="fused into this layer's extra token", fuse_param="fuse")
