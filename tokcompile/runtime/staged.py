"""Stage-by-stage execution with bucket dispatch (DESIGN.md §1.8).

After a stage that ends in a data-dependent token count, the runner reads the per-image counts,
picks the smallest bucket ≥ the batch maximum, and cuts (or pads) every token-dimension tensor
to that bucket before the next stage. Padding is masked inside the stages, so a bucketed batch
gives each image the result it gets alone. A count above every bucket runs at its own size: no
token is ever dropped by dispatch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from ..backends.base import StageCall
from ..manifest import ExtraDim
from .buckets import pick_bucket, split_by_count


def fit_tokens(value: np.ndarray, n: int) -> np.ndarray:
    """Cut or pad dim 1 to ``n``: padding is False (masks), -1 (ids) or 0 (tokens)."""
    have = value.shape[1]
    if have >= n:
        return np.ascontiguousarray(value[:, :n])
    fill = False if value.dtype == np.bool_ else -1 if np.issubdtype(value.dtype, np.integer) else 0
    pad = np.full((value.shape[0], n - have, *value.shape[2:]), fill, dtype=value.dtype)
    return np.concatenate([value, pad], axis=1)


@dataclass
class DispatchStats:
    """Per boundary: observed per-image counts, buckets used per batch, padded token slots."""

    counts: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    buckets: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    slots: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # Σ bucket × batch
    used: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # Σ counts

    def padding_overhead(self, stage: int) -> float:
        return 1.0 - self.used[stage] / self.slots[stage] if self.slots[stage] else 0.0


@dataclass(frozen=True)
class DimCut:
    """An extra data-dependent dim a boundary cuts to the batch's largest ``count`` (AdaViT's kept
    heads, MLP rows); ``manifest.ExtraDim`` is one with the dim's full size besides."""

    count: str
    values: list[str]


class LoopStage(Protocol):
    """What the stage loop reads of a stage (``manifest.StageEntry`` has all of it)."""

    @property
    def inputs(self) -> list[str]: ...
    @property
    def values_in(self) -> list[str]: ...
    @property
    def outputs(self) -> list[str]: ...
    @property
    def token_values(self) -> list[str]: ...
    @property
    def count(self) -> Optional[str]: ...
    @property
    def buckets(self) -> list[int]: ...
    @property
    def extra_dims(self) -> Sequence[DimCut | ExtraDim]: ...


@dataclass
class EagerStage:
    """A LoopStage of a graph cut in memory (calibration, GMAC counting): no files."""

    inputs: list[str]
    values_in: list[str]
    outputs: list[str]
    token_values: list[str]
    count: Optional[str] = None
    buckets: list[int] = field(default_factory=list)
    extra_dims: Sequence[DimCut | ExtraDim] = ()


class StagedRunner:
    """Runs stages in order with bucket dispatch between them.

    stages: ``LoopStage``s (a bundle's ``StageEntry``s are ones): ``inputs`` ONNX names, ``values_in``
    value names, ``outputs``, ``token_values``, ``count``, ``buckets``, ``extra_dims``; calls: one
    callable per stage (a backend session, or eager torch modules for reference and FLOP
    counting); final: model output → value name.
    """

    def __init__(
        self,
        stages: Sequence[LoopStage],
        calls: list[StageCall],
        final: dict[str, str],
        split_overhead: Optional[float] = None,
    ) -> None:
        self.stages = stages
        self.final = final
        self.calls = calls
        self.stats = DispatchStats()
        # Splitting a batch by count at a boundary: a split must save this many padded token slots
        # (default: one full image's tokens). None or 0 turns splitting off.
        self.split_overhead = split_overhead

    def run(self, images: np.ndarray, exact: bool = False) -> dict[str, np.ndarray]:
        """All model outputs for ``images``. ``exact``: no buckets and no splitting, every boundary
        cuts to the batch's largest count (a batch of one then runs each stage at its own count)."""
        return self._run(0, {"": images}, exact)

    def _run(self, start: int, values: dict[str, np.ndarray], exact: bool) -> dict[str, np.ndarray]:
        for i in range(start, len(self.stages)):
            stage = self.stages[i]
            feed = {
                name: values[""] if i == 0 and j == 0 else values[value]
                for j, (name, value) in enumerate(zip(stage.inputs, stage.values_in))
            }
            values.update(zip(stage.outputs, self.calls[i](stage.outputs, feed)))
            if stage.count and i + 1 < len(self.stages):
                counts = values[stage.count]
                buckets = [] if exact else list(stage.buckets)
                groups = (
                    split_by_count(counts, buckets, self.split_overhead)
                    if self.split_overhead and not exact
                    else [np.arange(len(counts))]
                )
                if len(groups) > 1:
                    parts = [self._run(i + 1, self._cut(i, _take(values, g), buckets), exact) for g in groups]
                    return _merge(parts, groups, len(counts))
                values = self._cut(i, values, buckets)
            else:
                values = self._cut_extra(stage, values)
        return {name: values[value] for name, value in self.final.items()}

    def _cut(self, i: int, values: dict[str, np.ndarray], buckets: list[int]) -> dict[str, np.ndarray]:
        """Cut the token values of boundary stage ``i`` to the (sub-)batch's bucket; record it."""
        stage = self.stages[i]
        assert stage.count is not None  # _run cuts only at stages that end in a count
        counts = values[stage.count]
        bucket = pick_bucket(int(counts.max()), buckets)
        for name in stage.token_values:
            if name in values and name in stage.outputs:
                values[name] = fit_tokens(values[name], bucket)
        self.stats.counts[i] += counts.tolist()
        self.stats.buckets[i][bucket] += 1
        self.stats.slots[i] += bucket * len(counts)
        self.stats.used[i] += int(counts.sum())
        return self._cut_extra(stage, values)

    @staticmethod
    def _cut_extra(stage: LoopStage, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for dim in stage.extra_dims:  # AdaViT's heads / MLP rows: cut to the batch max
            size = max(1, int(values[dim.count].max()))
            for name in dim.values:
                values[name] = fit_tokens(values[name], size)
        return values


def _take(values: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[rows] for name, value in values.items()}


def _merge(parts: list[dict[str, np.ndarray]], groups: list[np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Sub-batch outputs back in batch order; token-dim outputs padded to the widest sub-batch."""
    merged = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if arrays[0].ndim > 1 and len({a.shape[1] for a in arrays}) > 1:
            width = max(a.shape[1] for a in arrays)
            arrays = [fit_tokens(a, width) for a in arrays]
        out = np.empty((batch, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for rows, a in zip(groups, arrays):
            out[rows] = a
        merged[name] = out
    return merged


def torch_stage_calls(modules: list[Any]) -> list[StageCall]:
    """Eager stage GraphModules as stage callables (inputs in placeholder order)."""
    import torch

    def make(module: Any) -> StageCall:
        def call(outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.no_grad():
                result = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()))
            result = result if isinstance(result, (tuple, list)) else (result,)
            return [r.detach().numpy() if not r.is_floating_point() else r.detach().float().numpy() for r in result]

        return call

    return [make(m) for m in modules]
