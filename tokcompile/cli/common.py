"""Argument helpers shared by commands."""

from __future__ import annotations

from ..errors import TokcompileError


def int_list(text: str, flag: str) -> list[int]:
    """'1,16' → [1, 16]; a one-line error names the flag otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TokcompileError(f"{flag} must be comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise TokcompileError(f"{flag} must be positive integers, got '{text}'")
    return values
