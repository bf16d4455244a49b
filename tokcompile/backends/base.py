"""The one interface every backend implements (DESIGN.md §1.6), and what passes through it.

A backend turns a bundle's exported stage files into what it runs, and runs them:

- ``probe()``: None when it can build here, else the reason (one line);
- ``check_options(options)``: refuse build options it does not take, before anything is exported;
- ``lowering(mode, ops)``: the ``--plugins`` mode its token-op nodes are exported with;
- ``plan(directory, stages, full_count, options)``: each stage's TensorRT optimization profiles
  (``tensorrt_plan``), pure: it reads the ONNX files and needs no TensorRT;
- ``build(directory, stages, full_count, options)``: write its files next to the stage files and
  return them with one engine entry per stage and the record of the build;
- ``unavailable(manifest)``: None when ``load`` can run the bundle here, else the reason;
- ``load(directory, manifest, threads)``: one callable per stage for ``runtime/staged.StagedRunner``.

The build (api.py), the runner, compare and deploy/ look a backend up in the registry
(``backends/__init__.py``) and call these; they do not branch on its name. report.md's engine
command lines follow the TensorRT flavour the manifest records (trtexec vs tensorrt_rtx).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from .. import _defaults
from ..errors import TokcompileError
from ..manifest import EngineEntry, EnginesRecord, Manifest, Profile, StageEntry

StageCall = Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]

# BuildOptions field → the CLI flag that sets it (for messages naming what the user typed).
OPTION_FLAGS = {
    "plugin_lib": "--plugin-lib",
    "timing_cache": "--timing-cache",
    "max_batch": "--max-batch",
    "target_sm": "--target-sm",
}


@dataclass(frozen=True)
class BuildOptions:
    """Build choices a backend may take; None means the backend's default (``_defaults``).

    max_batch: largest batch of every optimization profile. timing_cache: TensorRT timing cache
    file. plugin_lib: TensorRT plugin library. target_sm: compute capabilities to build for, as
    integers (80 = sm_80). tf32: whether fp32 matrix products may run in TF32 (recorded in every
    bundle, since the planned engine commands of report.md use it too).
    """

    max_batch: Optional[int] = None
    timing_cache: Optional[Path] = None
    plugin_lib: Optional[Path] = None
    target_sm: Optional[str | Sequence[int]] = None  # a tuple of ints after check_options
    tf32: Optional[bool] = None

    def given(self) -> list[str]:
        """Fields of OPTION_FLAGS set by the user, in flag order."""
        return [name for name in OPTION_FLAGS if getattr(self, name) is not None]


@dataclass
class BuildOutput:
    """What ``Backend.build`` wrote: files (relative to the bundle), one engine per stage, and the
    record of the build (none of either when the backend runs the ONNX files themselves)."""

    files: list[str] = field(default_factory=list)
    engines: list[EngineEntry] = field(default_factory=list)
    record: Optional[EnginesRecord] = None


@dataclass
class Loaded:
    """A bundle ready to run: one call per stage, the first file it runs and that file's precision."""

    calls: list[StageCall]
    file: str
    precision: str


class Backend(Protocol):
    name: str  # --backend value and manifest["backend"]
    label: str  # for messages: "ONNX Runtime", "TensorRT", "TensorRT for RTX"
    needs: str  # what --backend NAME needs, for the message when probe() fails
    options: frozenset[str]  # BuildOptions fields (of OPTION_FLAGS) it takes
    device: str  # what its built files run on: "cpu" or "gpu" (serving picks instance kinds by it)

    def probe(self) -> Optional[str]: ...

    def check_options(self, options: BuildOptions) -> BuildOptions: ...

    def lowering(self, mode: str, ops: Iterable[Any]) -> str: ...

    def plan(
        self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions
    ) -> list[list[Profile]]: ...

    def build(
        self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions
    ) -> BuildOutput: ...

    def unavailable(self, manifest: Manifest) -> Optional[str]: ...

    def load(self, directory: Path, manifest: Manifest, threads: Optional[int] = None) -> Loaded: ...


class BackendBase:
    """Defaults shared by the backends: option checks against ``options`` (with the tf32 default),
    the TensorRT plan for report.md, and the export's lowering as asked."""

    name = ""
    label = ""
    needs = ""
    options: frozenset[str] = frozenset()
    device = "cpu"
    # field → why this backend refuses it (said after "applies to ..."), e.g. a feature it lacks
    refusals: dict[str, str] = {}

    def check_options(self, options: BuildOptions) -> BuildOptions:
        refused = [f for f in options.given() if f not in self.options]
        if refused:
            from . import AUTO, BACKENDS, get_backend

            flags = ", ".join(OPTION_FLAGS[f] for f in refused)
            takers = [n for n in BACKENDS if all(f in get_backend(n).options for f in refused)]
            auto = " (or auto)" if any(n in AUTO for n in takers) else ""
            where = f"--backend {' or '.join(takers)}{auto}" if takers else "no backend"
            verb = "applies" if len(refused) == 1 else "apply"
            why = "; ".join(self.refusals[f] for f in refused if f in self.refusals)
            raise TokcompileError(f"{flags} {verb} to {where}, not {self.name}" + (f": {why}" if why else ""))
        if options.max_batch is not None and options.max_batch < 1:
            raise TokcompileError(f"--max-batch must be ≥ 1, got {options.max_batch}")
        return replace(options, tf32=_defaults.TRT_TF32 if options.tf32 is None else options.tf32)

    def lowering(self, mode: str, ops: Iterable[Any]) -> str:
        return mode

    def plan(
        self, directory: Path, stages: list[StageEntry], full_count: int, options: BuildOptions
    ) -> list[list[Profile]]:
        """Each stage's TensorRT profiles (``tensorrt_plan``): what this backend builds, or, for one
        that builds nothing, what report.md's engine commands use. Raises ValueError when a stage
        has dynamic dimensions the profiles do not cover."""
        from .tensorrt.profiles import plan_profiles

        return plan_profiles(directory, stages, full_count, options.max_batch)


def parse_target_sm(value: str | Sequence[int], supported: Sequence[int], label: str) -> tuple[int, ...]:
    """``"80,86"`` (or ``"sm_80"``, ``"8.0"``, ``[80, 86]``) → (80, 86), each one of ``supported``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        sms = tuple(sorted({int(str(v).strip().removeprefix("sm_").replace(".", "")) for v in items if str(v).strip()}))
    except ValueError:
        raise TokcompileError(f"--target-sm must be compute capabilities like 80,86, got '{value}'") from None
    unknown = [sm for sm in sms if sm not in supported]
    if not sms or unknown:
        raise TokcompileError(
            f"--target-sm {','.join(map(str, unknown)) or repr(value)} is not supported by {label}; choose from "
            f"{','.join(map(str, supported))}"
        )
    return sms
