"""A-ViT (Yin et al., CVPR'22): adaptive halting per token; halted tokens removed, staged.

Semantics: methods-reference.md §4. γ/β per released model (tiny-10-30 → γ 10, β 30;
small-10-75 → γ 10, β 75), ε = 0.01. A-ViT needs its fine-tuned weights: the official
checkpoints hold a plain timm-0.4.12 ViT state dict (under ``model``), which ``--weights PATH``
loads as is; with DeiT or random weights nothing halts unless γ/β are changed (§4.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import TokcompileError
from .legend import Legend
from .options import Option, number

# A-ViT (methods-reference.md §4.1): γ, β of the released weights by timm name; other models get
# DEFAULT_GAMMA_BETA_OTHER (the small setting). ε: halting threshold 1 − ε.
DEFAULT_GAMMA_BETA = {"deit_tiny_patch16_224": (10.0, 30.0), "deit_small_patch16_224": (10.0, 75.0)}
DEFAULT_GAMMA_BETA_OTHER = (10.0, 75.0)
DEFAULT_EPS = 0.01

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..passes.manager import Pass


def pipeline() -> tuple[Pass, ...]:
    """The passes, in order (imported on use: the method registry loads without torch)."""
    from ..passes.annotate_tokens import annotate_tokens
    from ..passes.insert_avit_halting import insert_avit_halting

    return (insert_avit_halting, annotate_tokens)


def gamma_beta(timm_name: str) -> tuple[float, float]:
    """(γ, β) of the released weights for ``timm_name``; the small setting for other models."""
    return DEFAULT_GAMMA_BETA.get(timm_name, DEFAULT_GAMMA_BETA_OTHER)


@dataclass(frozen=True)
class AvitConfig:
    gamma: float
    beta: float
    eps: float = DEFAULT_EPS

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
        g, b = gamma_beta(spec.name)
        eps = DEFAULT_EPS if eps is None else float(eps)
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


def _per_model(index: int) -> str:
    """The default of γ (index 0) or β (1) as shown: one number, or per released model."""
    released = {name: values[index] for name, values in DEFAULT_GAMMA_BETA.items()}
    other = DEFAULT_GAMMA_BETA_OTHER[index]
    if all(v == other for v in released.values()):
        return number(other)
    listed = ", ".join(f"{name} {number(v)}" for name, v in released.items())
    return f"per model: {listed}; others {number(other)}"


OPTIONS = (
    Option("gamma", "halting gate scale γ: h = sigmoid(γ·y₀ − β)", _per_model(0), float),
    Option("beta", "halting gate center β", _per_model(1), float),
    Option(
        "eps",
        "a token halts once its cumulative halting score reaches 1 − ε; in (0, 1)",
        number(DEFAULT_EPS),
        float,
    ),
)

LEGEND = Legend(
    kept="still running",
    dropped="halted at this layer",
    earlier="halted at an earlier layer",
    noun="patches still running",
)
