"""Token-count buckets: choose them from a latency curve and a count distribution, dispatch to them.

A stage whose input token count depends on the image runs on a *bucket*: the smallest chosen
count ≥ the batch's largest count, the batch padded to it. The bucket set trades padding (run on
more tokens than needed) against the number of executables (each bucket is an engine profile).

Selection (DESIGN.md §4): given a latency curve ``latency(n)`` (per block, measured on the target;
a staircase on GPUs) and the counts observed on calibration images, pick at most ``K`` buckets
minimising the expected latency of a batch of ``B`` images. A batch runs on the bucket of its
maximum count; with the empirical CDF ``F`` of per-image counts, ``P(max ≤ x) = F(x)^B``, so

    E[latency] = Σ_j latency(b_j) · (F(b_j)^B − F(b_{j−1})^B)

with ``b_K = N`` (the full count) always present, so no image is ever truncated. Only observed
counts and the ends of flat steps of the curve can be optimal bucket values (moving a bucket up
to the end of its flat step costs nothing and covers more images), so the search runs over those
candidates: dynamic programming, exact for this objective.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import TokcompileError

Curve = Callable[[int], float]
Counts = Union[Sequence[int], np.ndarray]  # per-image token counts


def validate_buckets(buckets: Sequence[int], max_tokens: int, what: str = "--buckets") -> tuple[int, ...]:
    """Strictly increasing positive counts, none above ``max_tokens``.

    Nothing is appended: a batch whose largest count is above every listed bucket runs at that
    count itself (``pick_bucket``), never padded to the full token count."""
    values = list(buckets)
    if any(not isinstance(b, (int, np.integer)) or isinstance(b, bool) for b in values):
        raise TokcompileError(f"{what} must be integers, got {values}")
    if any(b < 1 for b in values):
        raise TokcompileError(f"{what} must be positive token counts, got {values}")
    if any(b >= c for b, c in zip(values, values[1:])):
        raise TokcompileError(f"{what} must be strictly increasing, got {values}")
    if not values:
        raise TokcompileError(f"{what} must list at least one token count")
    if values[-1] > max_tokens:
        raise TokcompileError(f"{what}: bucket {values[-1]} is larger than the model's {max_tokens} tokens")
    return tuple(int(b) for b in values)


def pick_bucket(count: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ≥ ``count``. A count above every bucket runs at ``count`` itself (never truncated)."""
    i = bisect.bisect_left(buckets, count)
    return int(buckets[i]) if i < len(buckets) else int(count)


def expected_latency(buckets: Sequence[int], counts: Counts, latency: Curve, batch: int = 1) -> float:
    """E[latency(bucket(max of `batch` counts))] under the empirical distribution of ``counts``."""
    ordered = np.sort(np.asarray(counts))
    total, prev = 0.0, 0.0
    for b in sorted(buckets):
        cdf = float(np.searchsorted(ordered, b, side="right")) / len(ordered)
        p = cdf**batch
        total += latency(int(b)) * (p - prev)
        prev = p
    if prev < 1.0:  # counts above the largest bucket run unbucketed at their own size (max)
        total += latency(int(ordered[-1])) * (1.0 - prev)
    return total


def step_ends(latency: Curve, max_tokens: int, rel_tol: float = 0.02) -> list[int]:
    """Token counts n where latency(n + 1) exceeds latency(n) by more than ``rel_tol``: the last
    count of each flat step of a staircase curve."""
    values = [latency(n) for n in range(1, max_tokens + 2)]
    return [n for n in range(1, max_tokens + 1) if values[n] > values[n - 1] * (1.0 + rel_tol)]


@dataclass(frozen=True)
class BucketChoice:
    buckets: tuple[int, ...]
    expected_ms: float


def choose_buckets(
    counts: Counts, max_tokens: int, latency: Curve, max_buckets: int = 4, batch: int = 1
) -> BucketChoice:
    """At most ``max_buckets`` buckets (the last is ``max_tokens``) minimising expected latency."""
    if max_buckets < 1:
        raise TokcompileError(f"--max-buckets must be ≥ 1, got {max_buckets}")
    if len(counts) == 0:
        raise TokcompileError("bucket selection needs at least one observed token count")
    counts_arr = np.sort(np.asarray(counts, dtype=np.int64))
    if counts_arr[0] < 1 or counts_arr[-1] > max_tokens:
        raise TokcompileError(
            f"observed token counts must lie in [1, {max_tokens}], got {counts_arr[0]}..{counts_arr[-1]}"
        )
    cands = sorted(set(counts_arr.tolist()) | {c for c in step_ends(latency, max_tokens) if c >= counts_arr[0]})
    cands = [c for c in cands if c < max_tokens] + [max_tokens]
    # A candidate is dominated when a larger one is no slower (it covers more for free): drop it.
    kept, fastest_above = [], float("inf")
    for c in reversed(cands):
        if c == max_tokens or latency(c) < fastest_above:
            kept.append(c)
            fastest_above = min(fastest_above, latency(c))
    cands = sorted(kept)
    n = len(cands)
    p = [float(np.searchsorted(counts_arr, c, side="right") / len(counts_arr)) ** batch for c in cands]
    lat = [latency(c) for c in cands]

    def segment(i: int, j: int) -> float:  # bucket cands[j] serves counts in (cands[i], cands[j]]
        return lat[j] * (p[j] - (p[i] if i >= 0 else 0.0))

    # best[k][j]: minimal cost covering counts ≤ cands[j] with k buckets, the last at cands[j]
    inf = float("inf")
    best = [[inf] * n for _ in range(max_buckets + 1)]
    back = [[-1] * n for _ in range(max_buckets + 1)]
    for j in range(n):
        best[1][j] = segment(-1, j)
    for k in range(2, max_buckets + 1):
        for j in range(n):
            for i in range(j):
                cost = best[k - 1][i] + segment(i, j)
                if cost < best[k][j]:
                    best[k][j], back[k][j] = cost, i
    k_best = min(range(1, max_buckets + 1), key=lambda k: best[k][n - 1])
    chosen, j, k = [], n - 1, k_best
    while j >= 0 and k >= 1:
        chosen.append(cands[j])
        j, k = back[k][j], k - 1
    buckets = tuple(sorted(chosen))
    return BucketChoice(buckets, expected_latency(buckets, counts_arr, latency, batch))


def even_buckets(max_tokens: int, k: int, low: int = 1) -> tuple[int, ...]:
    """``k`` evenly spaced buckets ending at ``max_tokens`` (a baseline for comparison)."""
    return tuple(sorted({int(round(low + (max_tokens - low) * (i + 1) / k)) for i in range(k)}))


def split_by_count(counts: Counts, buckets: Sequence[int], overhead: float) -> list[np.ndarray]:
    """Split a batch at a boundary into sub-batches of similar counts, each run on its own bucket.

    One slow image would otherwise set the bucket of the whole batch (A-ViT's heavy-tailed halting
    counts). Cost of a sub-batch: its size × its bucket (padded token slots) + ``overhead`` (slots
    an extra run of the remaining stages is worth). Groups are contiguous in count order, so exact
    dynamic programming over the sorted counts finds the cheapest split. Returns index arrays into
    ``counts`` (ascending count order); one group when splitting does not pay.
    """
    order = np.argsort(np.asarray(counts), kind="stable")
    c = np.asarray(counts)[order]
    n = len(c)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the j smallest counts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        bucket = pick_bucket(int(c[j - 1]), buckets)
        for i in range(j):
            cost = best[i] + (j - i) * bucket + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
