"""Token-reduction methods: name → (config type, ordered pass tuple).

A method is an explicit pipeline; ``methods/<name>.py`` is the only place its order lives.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TokcompileError
from . import evit


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config: Any  # dataclass with resolve(spec, **params) and params()
    pipeline: tuple[Callable, ...]


METHODS: dict[str, Method] = {
    "none": Method("none", "dense model, no token reduction (the baseline)", None, ()),
    "evit": Method(
        "evit",
        "EViT: keep top-k tokens by CLS attention, fuse the rest (ICLR'22)",
        evit.EvitConfig,
        evit.PIPELINE,
    ),
}


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TokcompileError(f"unknown method '{name}'{hint} (known: {', '.join(METHODS)}; see 'tokcompile list methods')")
