"""AdaViT (Meng et al., CVPR'22): per-image head, sub-layer and token skipping; staged.

Semantics: methods-reference.md §5 (``MengLcool/AdaViT`` ``StepAdaBlock``, the README's
``--ada-head --ada-layer --ada-token-with-mlp`` DeiT-S model): decision heads read each block's
input; heads and sub-layers from block ``keep_layers`` (1) on, tokens in every block; thresholds
0.5 (heads, sub-layers) and 0.6 (tokens). The decision heads need training: load the official
checkpoint with ``--weights PATH``; without one they are random (seeded by ``--heads-seed``) and
the build says so.

Everything tokcompile knows about the official checkpoint layout is in this file:
``checkpoint_adapter`` (query/key/value → timm's qkv, decision heads set apart) and
``prepare_state`` (decision heads by official name → the tensors ``insert_adavit_gates`` reads).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .. import _defaults
from ..errors import TokcompileError
from .legend import Legend
from .options import Option, number

# AdaViT (methods-reference.md §5.1): sigmoid thresholds; head/layer gates from block 1 on. The
# decision heads are drawn from DEFAULT_HEADS_SEED when the checkpoint has none.
DEFAULT_TOKEN_THRESHOLD = 0.6
DEFAULT_HEAD_THRESHOLD = 0.5
DEFAULT_LAYER_THRESHOLD = 0.5
DEFAULT_KEEP_LAYERS = 1
DEFAULT_HEADS_SEED = _defaults.SEED

if TYPE_CHECKING:
    import torch

    from ..models import ModelSpec
    from ..passes.manager import Pass

logger = logging.getLogger(__name__)

# Official parameter names of one block's decision heads (MengLcool/AdaViT StepAdaBlock).
HEAD_KEYS = {
    "tokens": "blocks.{l}.attn.token_select.mlp_head",
    "heads": "blocks.{l}.head_select.mlp_head",
    "layers": "blocks.{l}.layer_select.mlp_head",
}
# The official backbone is a DeiT whose attention has separate query/key/value Linear layers
# (timm fuses them as ``qkv``, rows [q; k; v]); every other key has timm's name already.
QKV = ("query", "key", "value")


def pipeline() -> tuple[Pass, ...]:
    """The passes, in order (imported on use: the method registry loads without torch). The pass
    records its own token counts (no SDPA is left for annotate_tokens)."""
    from ..passes.insert_adavit_gates import insert_adavit_gates

    return (insert_adavit_gates,)


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
    heads_seed: int  # random decision heads when the checkpoint has none

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
        heads_seed: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> AdavitConfig:
        """Fill defaults and validate; ``seed`` is ``heads_seed``'s name in bundles built before
        it was renamed (manifest params), accepted so that they rebuild."""
        if not spec.has_class_token or spec.num_prefix_tokens != 1:
            raise TokcompileError(
                f"method 'adavit' reads its decisions from the CLS token; '{spec.name}' needs exactly one prefix "
                f"token, a CLS token (has {spec.num_prefix_tokens}, class token {spec.has_class_token})"
            )
        keep = DEFAULT_KEEP_LAYERS if keep_layers is None else int(keep_layers)
        if not 0 <= keep <= spec.depth:
            raise TokcompileError(f"--keep-layers must be in [0, {spec.depth}], got {keep}")
        given = heads_seed if heads_seed is not None else seed
        try:
            heads = DEFAULT_HEADS_SEED if given is None else int(given)
        except (TypeError, ValueError):
            raise TokcompileError(f"--heads-seed must be an integer, got {given!r}") from None
        if not 0 <= heads < 2**64:  # torch.Generator's seed range
            raise TokcompileError(f"--heads-seed must be in [0, 2**64), got {heads}")
        return cls(
            _probability("token_threshold", DEFAULT_TOKEN_THRESHOLD if token_threshold is None else token_threshold),
            _probability("head_threshold", DEFAULT_HEAD_THRESHOLD if head_threshold is None else head_threshold),
            _probability("layer_threshold", DEFAULT_LAYER_THRESHOLD if layer_threshold is None else layer_threshold),
            keep,
            heads,
        )

    def params(self) -> dict[str, Any]:
        return {
            "token_threshold": self.token_threshold,
            "head_threshold": self.head_threshold,
            "layer_threshold": self.layer_threshold,
            "keep_layers": self.keep_layers,
            "heads_seed": self.heads_seed,
        }


def checkpoint_adapter(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An official AdaViT checkpoint (``ada_step_deit_*``) → (timm backbone state dict, decision-head
    tensors by official name, see HEAD_KEYS). Other state dicts come back unchanged with no method
    tensors."""
    import torch

    if not any(k.endswith(".attn.query.weight") for k in state):
        return state, {}
    backbone = {k: v for k, v in state.items() if not _is_head_key(k)}
    method = {k: v for k, v in state.items() if k not in backbone}
    for prefix in sorted({k.removesuffix(".query.weight") for k in state if k.endswith(".attn.query.weight")}):
        for kind in ("weight", "bias"):
            parts = [backbone.pop(f"{prefix}.{name}.{kind}", None) for name in QKV]
            if all(p is not None for p in parts):
                backbone[f"{prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
            elif any(p is not None for p in parts):
                raise TokcompileError(
                    f"AdaViT checkpoint has only some of {prefix}.query/key/value.{kind}; the file is incomplete"
                )
    return backbone, method


def prepare_state(
    spec: ModelSpec, config: AdavitConfig, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The decision heads ``insert_adavit_gates`` reads (``ctx.method_state``), and warnings.

    From ``state`` (the checkpoint's tensors by official name, see ``checkpoint_adapter``) when
    it has decision heads, each checked against the model; else drawn with the official
    initialisation (trunc-normal std 0.02, bias 0) from ``config.heads_seed``, with a warning.
    """
    import torch

    from ..ops.adavit_block import decision_outputs
    from ..passes.insert_adavit_gates import block_decisions, decision_head_name

    shapes = decision_outputs(spec.num_heads)
    dim, keep_layers = spec.embed_dim, config.keep_layers
    wanted = [(blk, kind) for blk in range(spec.depth) for kind in block_decisions(blk, keep_layers)]
    out: dict[str, torch.Tensor] = {}
    if any(_is_head_key(k) for k in state):
        for blk, kind in wanted:
            key = HEAD_KEYS[kind].format(l=blk)
            w, b = state.get(f"{key}.weight"), state.get(f"{key}.bias")
            if w is None or b is None or tuple(w.shape) != (shapes[kind], dim):
                got = "missing" if w is None or b is None else f"shape {tuple(w.shape)}"
                raise TokcompileError(
                    f"the checkpoint's AdaViT decision heads do not fit this model: '{key}.weight' is {got}, "
                    f"expected ({shapes[kind]}, {dim}) (blocks {keep_layers}.. need head and layer selectors)"
                )
            out[decision_head_name(blk, kind, "weight")] = w.float()
            out[decision_head_name(blk, kind, "bias")] = b.float()
        return out, []
    generator = torch.Generator().manual_seed(config.heads_seed)
    for blk, kind in wanted:
        w = torch.empty(shapes[kind], dim)
        torch.nn.init.trunc_normal_(w, std=0.02, generator=generator)
        out[decision_head_name(blk, kind, "weight")] = w
        out[decision_head_name(blk, kind, "bias")] = torch.zeros(shapes[kind])
    warning = (
        f"AdaViT's decision heads are RANDOM (seed {config.heads_seed}): the checkpoint has none. Heads, "
        "sub-layers and tokens are skipped by untrained gates, so the outputs mean nothing; pass the official "
        "AdaViT checkpoint with --weights PATH (see README, AdaViT)"
    )
    return out, [warning]


def _is_head_key(key: str) -> bool:
    """Whether ``key`` is a decision-head tensor of the official layout (``blocks.3.head_select.mlp_head.weight``)."""
    return any(f".{head.split('.{l}.', 1)[1]}." in key for head in HEAD_KEYS.values())


OPTIONS = (
    Option(
        "token_threshold",
        "keep a token when its sigmoid > this, in (0, 1)",
        number(DEFAULT_TOKEN_THRESHOLD),
        float,
    ),
    Option(
        "head_threshold",
        "keep a head when its sigmoid > this, in (0, 1)",
        number(DEFAULT_HEAD_THRESHOLD),
        float,
    ),
    Option(
        "layer_threshold",
        "run a sub-layer when its sigmoid > this, in (0, 1)",
        number(DEFAULT_LAYER_THRESHOLD),
        float,
    ),
    Option(
        "keep_layers",
        "blocks before this one have no head/sub-layer gates",
        str(DEFAULT_KEEP_LAYERS),
        int,
    ),
    Option(
        "heads_seed",
        "seed of the random decision heads drawn when the checkpoint has none (not the weights' --seed)",
        str(DEFAULT_HEADS_SEED),
        int,
    ),
)

LEGEND = Legend(
    kept="computed in this block",
    dropped="skipped in this block (computed again in the next)",
    earlier=None,
    noun="patches computed",
)
