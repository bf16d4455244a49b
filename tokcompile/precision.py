"""The precisions a bundle can be built in, and the check of a user's ``--precision``.

Kept apart from the pass that casts the graph (``passes/cast_precision.py``) so flag validation
(``api``, ``verify``) needs neither torch nor the pass layer.
"""

from __future__ import annotations

from typing import Optional

from . import _defaults
from .errors import TokcompileError

PRECISIONS = ("fp32", "fp16", "bf16")


def check_precision(precision: Optional[str]) -> str:
    """``None`` → the default; anything but fp32/fp16/bf16 is a one-line user error."""
    precision = _defaults.PRECISION if precision is None else precision
    if precision not in PRECISIONS:
        raise TokcompileError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    return precision
