"""AdaViT (Meng et al., CVPR'22): per-image head, sub-layer and token skipping; staged.

Semantics: methods-reference.md §5 (``MengLcool/AdaViT`` ``StepAdaBlock``, the README's
``--ada-head --ada-layer --ada-token-with-mlp`` DeiT-S model): decision heads read each block's
input; heads and sub-layers from block ``keep_layers`` (1) on, tokens in every block; thresholds
0.5 (heads, sub-layers) and 0.6 (tokens). The decision heads need training: load the official
checkpoint with ``--weights PATH`` (``models/weights.py`` maps its keys); without one they are
random (seeded) and the build says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .. import _defaults
from ..errors import TokcompileError
from ..models import ModelSpec
from ..passes.insert_adavit_gates import insert_adavit_gates

PIPELINE = (insert_adavit_gates,)  # records its own token counts (no SDPA is left for annotate_tokens)


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise TokcompileError(f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
    return value


@dataclass(frozen=True)
class AdavitConfig:
    token_threshold: float
    head_threshold: float
    layer_threshold: float
    keep_layers: int
    seed: int

    @property
    def layers(self) -> tuple[int, ...]:
        return ()

    @classmethod
    def resolve(
        cls,
        spec: ModelSpec,
        token_threshold: Optional[float] = None,
        head_threshold: Optional[float] = None,
        layer_threshold: Optional[float] = None,
        keep_layers: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> AdavitConfig:
        if not spec.has_class_token or spec.num_prefix_tokens != 1:
            raise TokcompileError(
                f"method 'adavit' reads its decisions from the CLS token; '{spec.name}' needs exactly one prefix "
                f"token, a CLS token (has {spec.num_prefix_tokens}, class token {spec.has_class_token})"
            )
        keep = _defaults.ADAVIT_KEEP_LAYERS if keep_layers is None else int(keep_layers)
        if not 0 <= keep <= spec.depth:
            raise TokcompileError(f"--keep-layers must be in [0, {spec.depth}], got {keep}")
        return cls(
            _probability(
                "token_threshold", _defaults.ADAVIT_TOKEN_THRESHOLD if token_threshold is None else token_threshold
            ),
            _probability(
                "head_threshold", _defaults.ADAVIT_HEAD_THRESHOLD if head_threshold is None else head_threshold
            ),
            _probability(
                "layer_threshold", _defaults.ADAVIT_LAYER_THRESHOLD if layer_threshold is None else layer_threshold
            ),
            keep,
            _defaults.SEED if seed is None else int(seed),
        )

    def params(self) -> dict[str, Any]:
        return {
            "token_threshold": self.token_threshold,
            "head_threshold": self.head_threshold,
            "layer_threshold": self.layer_threshold,
            "keep_layers": self.keep_layers,
            "seed": self.seed,
        }
