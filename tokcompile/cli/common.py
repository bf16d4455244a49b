"""Argument helpers shared by commands.

Help texts never spell a default: ``shown(text, value)`` appends the value taken from
``_defaults`` (or a method's ``Option.default``), so a default changes in one place.
"""

from __future__ import annotations

import argparse
import ast
import math
from typing import Any, Optional

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


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'")
    return value


def _at_least(text: str, kind: type, low: float, what: str) -> Any:
    value = _number(text, kind, what)
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value:g}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (a usage error is one line, exit 1: cli.main.Parser)."""
    return _at_least(text, int, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _at_least(text, int, 0, "an integer ≥ 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number ≥ 0 (a tolerance)."""
    return _at_least(text, float, 0.0, "a finite number ≥ 0")


def batch_size(text: str) -> int:
    """argparse type: a batch size in [1, _defaults.MAX_BATCH]."""
    from .. import _defaults

    value = positive_int(text)
    if value > _defaults.MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be at most {_defaults.MAX_BATCH} (memory), got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (a share of images)."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


def add_model_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--img-size and --model-arg: what ``timm.create_model`` gets besides the name (``model_kwargs_of``)."""
    p.add_argument("--img-size", type=int, default=None, help="input resolution (timm img_size), e.g. 224 for DINOv2")
    p.add_argument(
        "--model-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra timm.create_model argument, repeatable (e.g. qk_norm=True)",
    )


def model_kwargs_of(args: argparse.Namespace) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments of ``add_model_arguments``'s flags."""
    kwargs = model_args(args.model_arg or [])
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    return kwargs


def shown(text: str, default: Any) -> str:
    """``text`` with its default appended, as every help text shows it."""
    if isinstance(default, bool):
        default = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return f"{text} (default {default})"


def add_option(group: Any, option: Any, help_text: Optional[str] = None, default: Optional[str] = None) -> None:
    """One ``methods.options.Option`` as an argparse argument (dest = its name, default None)."""
    kwargs: dict[str, Any] = {"dest": option.name, "default": None}
    if option.boolean:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = option.type
        if option.metavar:
            kwargs["metavar"] = option.metavar
    kwargs["help"] = shown(help_text or option.help, default if default is not None else option.default)
    group.add_argument(option.option_string, **kwargs)


def add_method_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every method's ``Option``s (``methods.METHODS[...].options``): one argument group per method;
    a parameter several methods share (``--layers``) is one flag whose help names each method's
    meaning and default. Returns the parameter names (argparse dests)."""
    from ..methods import METHODS

    owners: dict[str, list[tuple[str, Any]]] = {}
    for method in METHODS.values():
        for option in method.options:
            owners.setdefault(option.name, []).append((method.name, option))
    shared = {name for name, users in owners.items() if len(users) > 1}
    if shared:
        group = parser.add_argument_group("parameters of several methods")
        for name in sorted(shared):
            users = owners[name]
            text = "; ".join(f"{m}: {o.help}" for m, o in users)
            default = "; ".join(f"{m} {o.default}" for m, o in users)
            add_option(group, users[0][1], text, default)
    for method in METHODS.values():
        unique = [o for o in method.options if o.name not in shared]
        if unique:
            group = parser.add_argument_group(f"--method {method.name}: {method.summary}")
            for option in unique:
                add_option(group, option)
    return list(owners)
