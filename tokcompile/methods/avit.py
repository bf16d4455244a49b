"""A-ViT (Yin et al., CVPR'22): adaptive halting per token; halted tokens removed, staged.

Semantics: methods-reference.md §4. γ/β per released model (tiny-10-30 → γ 10, β 30;
small-10-75 → γ 10, β 75), ε = 0.01. A-ViT needs its fine-tuned weights: the official
checkpoints hold a plain timm-0.4.12 ViT state dict (under ``model``), which ``--weights PATH``
loads as is; with DeiT or random weights nothing halts unless γ/β are changed (§4.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import TokcompileError
from ..models import ModelSpec
from ..passes.annotate_tokens import annotate_tokens
from ..passes.insert_avit_halting import insert_avit_halting

PIPELINE = (insert_avit_halting, annotate_tokens)
# Released weights (methods-reference.md §4.1); other models default to the small setting.
GAMMA_BETA = {"deit_tiny_patch16_224": (10.0, 30.0), "deit_small_patch16_224": (10.0, 75.0)}


@dataclass(frozen=True)
class AvitConfig:
    gamma: float
    beta: float
    eps: float = 0.01

    @property
    def layers(self) -> tuple[int, ...]:
        return ()

    @classmethod
    def resolve(
        cls, spec: ModelSpec, gamma: Optional[float] = None, beta: Optional[float] = None, eps: Optional[float] = None
    ) -> AvitConfig:
        if not spec.has_class_token or spec.num_prefix_tokens != 1:
            raise TokcompileError(
                f"method 'avit' halts tokens and reads the ponder-weighted CLS; '{spec.name}' needs exactly one "
                f"prefix token, a CLS token (has {spec.num_prefix_tokens}, class token {spec.has_class_token})"
            )
        g, b = GAMMA_BETA.get(spec.name, (10.0, 75.0))
        eps = 0.01 if eps is None else float(eps)
        if not 0.0 < eps < 1.0:
            raise TokcompileError(f"--eps must be in (0, 1), got {eps}")
        gamma, beta = float(g if gamma is None else gamma), float(b if beta is None else beta)
        for flag, value in (("--gamma", gamma), ("--beta", beta)):
            if not math.isfinite(value):
                raise TokcompileError(f"{flag} must be a finite number, got {value}")
        if gamma <= 0:
            raise TokcompileError(f"--gamma must be > 0 (the halting gate's slope), got {gamma}")
        return cls(gamma, beta, eps)

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "beta": self.beta, "eps": self.eps}
