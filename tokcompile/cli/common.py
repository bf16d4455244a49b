"""Argument helpers shared by commands."""

from __future__ import annotations

import ast
from typing import Any

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


def model_args(items: list[str]) -> dict[str, Any]:
    """['qk_norm=True', 'img_size=384'] → {'qk_norm': True, 'img_size': 384} (Python literals)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise TokcompileError(f"--model-arg must look like KEY=VALUE (e.g. qk_norm=True), got '{item}'")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out
