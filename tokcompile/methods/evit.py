"""EViT (Liang et al., ICLR'22): keep the top-k tokens by CLS attention, fuse the rest.

Semantics follow methods-reference.md §1; defaults from the official ``main.py``:
blocks (3, 6, 9) of 12 (scaled for other depths), keep rate 0.7, token fusion on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .. import _defaults
from ..errors import TokcompileError
from ..models import ModelSpec
from ..passes.annotate_tokens import annotate_tokens
from ..passes.capture_cls_attention import capture_cls_attention
from ..passes.insert_evit_select import insert_evit_select
from ..passes.output_kept_indices import output_kept_indices

PIPELINE = (capture_cls_attention, insert_evit_select, output_kept_indices, annotate_tokens)


def default_layers(depth: int) -> tuple[int, ...]:
    """(3, 6, 9) for 12 blocks; the same relative positions for other depths."""
    if depth == 12:
        return _defaults.EVIT_LAYERS_12
    return tuple(sorted({min(depth - 1, max(0, round(i * depth / 12))) for i in _defaults.EVIT_LAYERS_12}))


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
        layers: Optional[Sequence[Any]] = None,
        fuse: Optional[bool] = None,
    ) -> EvitConfig:
        """Fill defaults and validate against the model; raises TokcompileError on bad values."""
        if not spec.has_class_token:
            raise TokcompileError(
                f"method 'evit' scores tokens by CLS attention, but '{spec.name}' has no class token "
                f"(global_pool='{spec.global_pool}'); use a model with a CLS token"
            )
        keep = _defaults.EVIT_KEEP_RATE if keep_rate is None else keep_rate
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
            raise TokcompileError(f"--keep-rate must be in (0, 1], got {keep_rate}")
        if layers is None:
            chosen = default_layers(spec.depth)
        else:
            chosen = tuple(_layer_index(v, spec.depth) for v in layers)
            if len(set(chosen)) != len(chosen):
                raise TokcompileError(f"--layers must not repeat a block, got {list(layers)}")
            chosen = tuple(sorted(chosen))
        return cls(float(keep), chosen, _defaults.EVIT_FUSE if fuse is None else bool(fuse))

    def params(self) -> dict[str, Any]:
        return {"keep_rate": self.keep_rate, "layers": list(self.layers), "fuse": self.fuse}


def _layer_index(value: Any, depth: int) -> int:
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError
        index = int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise TokcompileError(f"--layers must be integers (0-based block indices), got '{value}'") from None
    if not 0 <= index < depth:
        raise TokcompileError(f"--layers: block {index} is out of range; this model has blocks 0..{depth - 1}")
    return index
