"""``--layers``: the blocks a method acts on, shared by every method that takes them; ``integer``:
the int parsing of option values (``--layers``, ToMe's ``--r``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from ..errors import TokcompileError

LayersSpec = Union[str, Sequence[Any]]


def parse_layers(value: LayersSpec, depth: int) -> tuple[int, ...]:
    """0-based block indices, sorted: a sequence of ints (or int strings) or comma text ``"3,6,9"``.

    Raises TokcompileError for a non-integer, an index outside [0, depth) or a repeated block."""
    items = value.split(",") if isinstance(value, str) else list(value)
    chosen = tuple(sorted({block_index(v, depth) for v in items}))
    if len(chosen) != len(items):
        raise TokcompileError(f"--layers must not repeat a block, got {items}")
    return chosen


def block_index(value: Any, depth: int) -> int:
    """One block index in [0, depth); bools and floats are refused (1.5 is no block)."""
    try:
        index = integer(value)
    except (TypeError, ValueError):
        raise TokcompileError(f"--layers must be integers (0-based block indices), got '{value}'") from None
    if not 0 <= index < depth:
        raise TokcompileError(f"--layers: block {index} is out of range; this model has blocks 0..{depth - 1}")
    return index


def integer(value: Any) -> int:
    """An int from an int or int text (surrounding spaces allowed); ValueError for a bool or a
    float (1.5 is no count), ValueError or TypeError for anything else ``int()`` refuses."""
    if isinstance(value, (bool, float)):
        raise ValueError
    return int(value.strip() if isinstance(value, str) else value)
