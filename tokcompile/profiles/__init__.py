"""Hardware profiles: a target's measured latency-versus-token-count curves (DESIGN.md §4).

A profile is a YAML file (``tokcompile/profiles/<name>.yaml`` ships with the package; any path
works too)::

    schema: tokcompile-profile/1
    name: cpu-2core-onnxruntime
    measured: true                  # false: an analytic placeholder, the tool warns when used
    backend: onnxruntime
    target: {kind: cpu, description: "...", cores: 2}      # or {kind: gpu, name, compute_capability}
    alignment: 1                    # token-count granularity of the hardware (tensor-core tile)
    curves:                         # one transformer block, per model width and batch
      - {width: 384, heads: 6, batch: 16, tokens: [8, 16, ...], latency_ms: [...]}

``Profile.latency(width, batch)`` returns ``n ↦ ms`` for bucket selection: piecewise-linear in
the measured points of the nearest (width, batch) curve, scaled by the batch ratio when the
batch was not measured; for an unmeasured profile, a staircase over ``alignment``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import TokcompileError

logger = logging.getLogger(__name__)

SCHEMA = "tokcompile-profile/1"


@dataclass
class Curve:
    width: int
    heads: int
    batch: int
    tokens: list[int]
    latency_ms: list[float]


@dataclass
class Profile:
    name: str
    measured: bool
    backend: str
    target: dict[str, Any]
    alignment: int = 1
    curves: list[Curve] = field(default_factory=list)
    measured_with: dict[str, Any] = field(default_factory=dict)

    def latency(self, width: int, batch: int = 1) -> Callable[[int], float]:
        """``n ↦ ms`` of one block at this width and batch."""
        if not self.curves:
            align = max(1, self.alignment)
            # Unmeasured: tensor-core tiles make cost flat within each aligned step.
            return lambda n: float(batch) * width * width * math.ceil(n / align) * align * 1e-9
        curve = min(self.curves, key=lambda c: (abs(math.log(c.width / width)), abs(math.log(c.batch / batch))))
        scale = (width / curve.width) ** 2 * (batch / curve.batch)
        xs, ys = np.asarray(curve.tokens, float), np.asarray(curve.latency_ms, float)
        return lambda n: float(np.interp(n, xs, ys)) * scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "measured": self.measured,
            "backend": self.backend,
            "target": self.target,
            "alignment": self.alignment,
            "measured_with": self.measured_with,
            "curves": [c.__dict__ for c in self.curves],
        }


def _fail(source: str, what: str) -> TokcompileError:
    return TokcompileError(
        f"profile '{source}' is malformed: {what}; fix the file or re-measure it with 'tokcompile profile'"
    )


def from_dict(data: Any, source: str) -> Profile:
    """Validate a parsed profile; every problem is a one-line TokcompileError naming the field."""
    if not isinstance(data, dict):
        raise _fail(source, "top level must be a mapping")
    if data.get("schema") != SCHEMA:
        raise _fail(source, f"'schema' must be '{SCHEMA}', got {data.get('schema')!r}")
    for key, typ in (("name", str), ("measured", bool), ("backend", str), ("target", dict)):
        if not isinstance(data.get(key), typ):
            raise _fail(source, f"'{key}' must be a {typ.__name__}")
    alignment = data.get("alignment", 1)
    if not isinstance(alignment, int) or alignment < 1:
        raise _fail(source, "'alignment' must be a positive integer")
    curves = []
    for i, c in enumerate(data.get("curves") or []):
        if not isinstance(c, dict):
            raise _fail(source, f"curves[{i}] must be a mapping")
        for key in ("width", "heads", "batch"):
            if not isinstance(c.get(key), int) or c[key] < 1:
                raise _fail(source, f"curves[{i}].{key} must be a positive integer")
        tokens, lat = c.get("tokens"), c.get("latency_ms")
        if not isinstance(tokens, list) or not isinstance(lat, list) or len(tokens) != len(lat) or len(tokens) < 2:
            raise _fail(source, f"curves[{i}] needs 'tokens' and 'latency_ms' lists of equal length ≥ 2")
        if any(not isinstance(t, int) for t in tokens) or any(b <= a for a, b in zip(tokens, tokens[1:])):
            raise _fail(source, f"curves[{i}].tokens must be strictly increasing integers")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf for v in lat):
            raise _fail(source, f"curves[{i}].latency_ms must be positive finite numbers")
        curves.append(Curve(c["width"], c["heads"], c["batch"], list(tokens), [float(v) for v in lat]))
    if data["measured"] and not curves:
        raise _fail(source, "a measured profile needs at least one curve")
    return Profile(
        data["name"],
        data["measured"],
        data["backend"],
        data["target"],
        alignment,
        curves,
        data.get("measured_with", {}),
    )


def shipped() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a YAML file by path. Warns when the profile is unmeasured."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TokcompileError(f"profile file '{path}' does not exist")
        text, source = path.read_text(), str(path)
    else:
        names = shipped()
        if name_or_path not in names:
            raise TokcompileError(
                f"unknown profile '{name_or_path}'; shipped: {', '.join(names)} (or pass a .yaml path)"
            )
        text, source = resources.files(__name__).joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise TokcompileError(f"profile '{source}' is not valid YAML ({first}); fix the file") from None
    profile = from_dict(data, source)
    if not profile.measured:
        logger.warning(
            "WARNING: profile '%s' is UNMEASURED (analytic placeholder); buckets chosen with it are guesses. "
            "Measure it on the target with 'tokcompile profile --target %s'",
            profile.name,
            profile.name,
        )
    return profile


def save_profile(profile: Profile, path: Path, force: bool = False) -> None:
    """Write atomically (temporary name, then rename); an existing file needs ``force``."""
    from ..outputs import write_file

    data = profile.to_dict()
    from_dict(data, str(path))  # never write a profile that loading would refuse
    write_file(path, yaml.safe_dump(data, sort_keys=False, width=120), force)
