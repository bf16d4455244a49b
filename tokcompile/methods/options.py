"""Method parameters as the CLI shows them: each method declares ``OPTIONS`` next to its Config.

The CLI builds one argument group per method from ``METHODS[name].options`` and passes
``{option.name: value}`` for the flags given to the method's ``Config.resolve`` (through
``build(**params)``), which validates the values and fills the defaults. Defaults are shown,
never applied, from here: ``Option.default`` is text made from ``_defaults``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Option:
    """One method parameter as the CLI shows it; the config's resolve() validates the value."""

    name: str  # keyword of build(**params) and of Config.resolve, e.g. "keep_rate"
    help: str  # what it does, without the default (the CLI appends it)
    default: str  # the default as shown, from _defaults (e.g. "0.7", "3,6,9 scaled to depth", "per model: ...")
    type: Callable[[str], Any] = str  # CLI text → value passed to resolve (e.g. float, int, str)
    boolean: bool = False  # --x / --no-x (argparse.BooleanOptionalAction); type ignored
    metavar: Optional[str] = None

    @property
    def option_string(self) -> str:
        """The flag on the command line: ``--`` + the name with dashes."""
        return "--" + self.name.replace("_", "-")


def on_off(value: bool) -> str:
    """A boolean default as shown: on / off."""
    return "on" if value else "off"


def number(value: float) -> str:
    """A numeric default as shown: 0.7, 13, 1e-06 (no trailing zeros)."""
    return f"{value:g}"
