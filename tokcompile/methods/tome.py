"""ToMe (Bolya et al., ICLR'23): merge r similar tokens in every block, off the shelf.

Semantics follow methods-reference.md §2; defaults from the official README: r = 13 in every
block, proportional attention on. ``r`` may be

* an int: the same r in every block (``--r 13``);
* a per-block list, padded with zeros (``--r 13,13,8``);
* a ``(r, inflection)`` schedule parsed like ToMe's ``parse_r`` (``--r 16:-1`` or ``--r "(16,-1)"``):
  ``lo = int(r·(1 − inflection))``, ``hi = 2r − lo``, ``r_i = int(lo + (hi − lo)/(L − 1)·i)``.

Per block r is capped at half the mergeable tokens, ``min(r, (t − P) // 2)`` (P = prefix
tokens), with a warning that says so. All prefix tokens are protected and stay first: CLS
(and a distillation token) as in the official code, and register tokens too, so models without
a class token (global average pooling) work. ``layers`` restricts the blocks that merge
(default: all); the other blocks have r = 0 and no merge op.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import TokcompileError
from .layers import LayersSpec, integer, parse_layers
from .options import Option, on_off

# ToMe (methods-reference.md §2.1): r=13 (README DeiT-S/Ti), proportional attention on; every
# block merges unless --layers says otherwise.
DEFAULT_R = 13
DEFAULT_PROP_ATTN = True

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..passes.manager import Pass

logger = logging.getLogger(__name__)


def pipeline() -> tuple[Pass, ...]:
    """The passes, in order (imported on use: the method registry loads without torch)."""
    from ..passes.add_proportional_attention import add_proportional_attention
    from ..passes.annotate_tokens import annotate_tokens
    from ..passes.insert_tome_merge import insert_tome_merge
    from ..passes.output_merge_maps import output_merge_maps

    return (insert_tome_merge, add_proportional_attention, output_merge_maps, annotate_tokens)


RSpec = Union[int, str, Sequence[int], tuple[int, float]]


def parse_r_text(text: str) -> Union[int, list[int], tuple[int, float]]:
    """CLI text → r: ``"13"`` (int), ``"13,13,0"`` (list), ``"16:-1"`` or ``"(16,-1)"`` (schedule)."""
    s = text.strip()
    try:
        if ":" in s or (s.startswith("(") and s.endswith(")")):
            parts = re.split(r"[:,]", s.strip("()"))
            if len(parts) != 2:
                raise ValueError
            return (integer(parts[0]), float(parts[1]))
        if "," in s or s.startswith("["):
            return [integer(p) for p in s.strip("[]").split(",") if p.strip()]
        return integer(s)
    except ValueError:
        raise TokcompileError(
            f"--r must be an int (13), a per-block list (13,13,8) or a schedule r:inflection (16:-1), got '{text}'"
        ) from None


def merge_schedule(r: RSpec, depth: int) -> list[int]:
    """r (int, list, (r, inflection) tuple or CLI text) → requested merges per block, uncapped.

    Same arithmetic as ToMe's ``parse_r`` in Python floats (methods-reference.md §2.1, §7.1):
    ``(16, -1)`` over 12 blocks gives [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0].
    """
    value = parse_r_text(r) if isinstance(r, str) else r
    if isinstance(value, tuple):
        if len(value) != 2:
            raise TokcompileError(f"--r schedule must be (r, inflection), got {value}")
        try:
            base, inflect = integer(value[0]), float(value[1])
        except (TypeError, ValueError):
            raise TokcompileError(f"--r schedule must be (int r, float inflection), got {value}") from None
    elif isinstance(value, (list, Sequence)) and not isinstance(value, (str, bytes)):
        try:
            values = [integer(v) for v in value]
        except (TypeError, ValueError):
            raise TokcompileError(f"--r list must hold integers, got {list(value)}") from None
        if len(values) > depth:
            raise TokcompileError(f"--r lists {len(values)} values but the model has {depth} blocks")
        return _non_negative(values + [0] * (depth - len(values)), r)
    else:
        try:
            base, inflect = integer(value), 0.0
        except (TypeError, ValueError):
            raise TokcompileError(f"--r must be an integer, got {value!r}") from None
    lo = int(base * (1.0 - inflect))
    hi = 2 * base - lo
    if depth == 1:
        return _non_negative([lo], r)
    step = (hi - lo) / (depth - 1)
    return _non_negative([int(lo + step * i) for i in range(depth)], r)


def _non_negative(schedule: list[int], given: Any) -> list[int]:
    if any(v < 0 for v in schedule):
        raise TokcompileError(f"--r must not be negative, got {given} (merges per block {schedule})")
    return schedule


def token_counts(num_tokens: int, num_prefix: int, schedule: Sequence[int]) -> list[int]:
    """Tokens after each block for per-block r (capped as ToMe does: min(r, (t − P) // 2))."""
    counts, t = [], num_tokens
    for r in schedule:
        t -= max(0, min(r, (t - num_prefix) // 2))
        counts.append(t)
    return counts


@dataclass(frozen=True)
class TomeConfig:
    r: tuple[int, ...]  # merges per block (one per block, capped; 0 outside ``layers``)
    layers: tuple[int, ...]  # blocks with a tome_merge op
    prop_attn: bool

    @classmethod
    def resolve(
        cls,
        spec: ModelSpec,
        r: Optional[RSpec] = None,
        layers: Optional[LayersSpec] = None,
        prop_attn: Optional[bool] = None,
    ) -> TomeConfig:
        """Fill defaults, cap r per block and validate; raises TokcompileError on bad values."""
        requested = merge_schedule(DEFAULT_R if r is None else r, spec.depth)
        chosen = tuple(range(spec.depth)) if layers is None else parse_layers(layers, spec.depth)
        schedule, capped, t = [], [], spec.num_tokens
        for block, want in enumerate(requested):
            want = want if block in chosen else 0
            got = min(want, max(0, (t - spec.num_prefix_tokens) // 2))
            if got < want:
                capped.append(f"block {block}: {want}→{got} ({t} tokens)")
            schedule.append(got)
            t -= got
        if capped:
            logger.warning(
                "tome: r exceeds half the mergeable tokens in %d block(s), capped: %s",
                len(capped),
                "; ".join(capped),
            )
        return cls(tuple(schedule), chosen, DEFAULT_PROP_ATTN if prop_attn is None else bool(prop_attn))

    def params(self) -> dict[str, Any]:
        return {"r": list(self.r), "layers": list(self.layers), "prop_attn": self.prop_attn}


OPTIONS = (
    Option(
        "r",
        "tokens merged per block: 13 (every block), 13,13,8 (per block) or 16:-1 (r:inflection schedule)",
        str(DEFAULT_R),
        metavar="R",
    ),
    Option("layers", "0-based blocks that merge, e.g. 0,1,2 (the others have r = 0)", "all blocks", metavar="BLOCKS"),
    Option("prop_attn", "proportional attention, log(size) key bias", on_off(DEFAULT_PROP_ATTN), boolean=True),
)
