"""``tokcompile bench``: the bundle against the dense model, interleaved in one run.

The dense model is rebuilt from the bundle's manifest (same weights, same precision, same
export path, method ``none``), so the ratio isolates token reduction. Runs alternate
reduced/dense (and swap order every iteration) so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import _defaults
from ..errors import TokcompileError
from .bundle import BENCH_FILE
from .caveats import caveats
from .runner import load

logger = logging.getLogger(__name__)


@dataclass
class BenchRow:
    batch: int
    name: str  # "reduced" or "dense"
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


def _row(batch: int, name: str, seconds: list[float]) -> BenchRow:
    ms = np.array(seconds) * 1e3
    return BenchRow(batch, name, batch * len(seconds) / sum(seconds), *np.percentile(ms, [50, 90, 99]).tolist())


def twin_runner(
    bundle: Path,
    method: Optional[str] = None,
    threads: Optional[int] = None,
    precision: Optional[str] = None,
    weights: Optional[str] = None,
):
    """Export a twin of the bundle's model to a temporary file and return an ONNX Runtime runner.

    method ``"none"``: the dense model (same weights, precision, export path). method None: the
    bundle's own method as ONE graph at the full token count, padded positions masked: the masked
    execution research code uses, the baseline a staged bundle must beat. ``precision``: the
    twin's (default: the precision ONNX Runtime executes for the bundle). ``weights``: a
    checkpoint path replacing the manifest's (``runtime.reference.rebuild``).
    """
    from ..backends import onnxruntime as ort_backend
    from ..export.onnx import onnx_from_graph_module
    from ..passes.graph_outputs import named_outputs
    from .bundle import read_manifest
    from .reference import rebuild

    manifest = read_manifest(bundle)
    stage = manifest.stages[0]
    gm, spec, _ = rebuild(manifest, method=method, precision=precision or stage.onnxruntime_precision, weights=weights)
    with tempfile.TemporaryDirectory(prefix="tokcompile-twin-") as tmp:  # the session keeps the model
        path = Path(tmp) / "twin.onnx"
        onnx_from_graph_module(gm, spec.input_shape, path, named_outputs(gm))
        return ort_backend.load(path, threads)


def dense_runner(
    bundle: Path, threads: Optional[int] = None, precision: Optional[str] = None, weights: Optional[str] = None
):
    return twin_runner(bundle, "none", threads, precision, weights)


@dataclass
class BenchReport:
    rows: list[BenchRow]
    # staged bundles: per boundary stage, token-count histogram, bucket hits and padding overhead
    dispatch: list[dict] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)  # runtime.caveats tags for every ratio


def check_batches(batches: Sequence[int], flag: str = "--batch") -> None:
    """Batch sizes in [1, MAX_BATCH]; one line naming ``flag`` otherwise."""
    for b in batches:
        if not 1 <= b <= _defaults.MAX_BATCH:
            raise TokcompileError(
                f"{flag} must be between 1 and {_defaults.MAX_BATCH} (a batch holds its images and every "
                f"activation in memory at once), got {b}"
            )


def bench(
    bundle: Path | str,
    batches: Optional[Sequence[int]] = None,
    iters: Optional[int] = None,
    warmup: Optional[int] = None,
    threads: Optional[int] = None,
    seed: int = 0,
    images: Optional[Path | str] = None,
    weights: Optional[str] = None,
) -> BenchReport:
    """Time the bundle against its dense twin (and, for staged bundles, its masked twin),
    interleaved. ``images``: a folder whose photos feed the batches (default random inputs),
    preprocessed at the bundle's input size. ``weights``: a checkpoint path replacing the
    manifest's for rebuilding the twins."""
    bundle = Path(bundle)
    batches = tuple(batches) if batches is not None else _defaults.BENCH_BATCHES
    iters = _defaults.BENCH_ITERS if iters is None else iters
    warmup = _defaults.BENCH_WARMUP if warmup is None else warmup
    check_batches(batches)
    if iters < 1 or warmup < 0:
        raise TokcompileError(f"--iters must be ≥ 1 and --warmup ≥ 0, got {iters} and {warmup}")
    reduced = load(bundle, threads)
    runs = {"reduced": reduced.run, "dense": dense_runner(bundle, threads, weights=weights)}
    if reduced.staged:
        runs["masked"] = twin_runner(bundle, None, threads, weights=weights)
    pool = None
    if images is not None:
        from ..data.images import image_batches, preprocessing

        model = reduced.manifest.model
        preprocess = preprocessing(model.timm_name, model.input_shape)
        pool = np.concatenate(list(image_batches(images, preprocess, 16, limit=max(batches))))
    rng = np.random.default_rng(seed)
    rows: list[BenchRow] = []
    for batch in batches:
        if pool is not None:
            x = pool[np.arange(batch) % len(pool)]
        else:
            x = rng.standard_normal((batch, *reduced.input_shape), dtype=np.float32)
        for _ in range(warmup):
            for fn in runs.values():
                fn(x)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(iters):
            order = list(runs) if i % 2 == 0 else list(reversed(list(runs)))
            for name in order:
                start = time.perf_counter()
                runs[name](x)
                times[name].append(time.perf_counter() - start)
        rows += [_row(batch, name, times[name]) for name in runs]
        logger.info("bench: batch %d done", batch)
    stats = reduced.engine.stats
    dispatch = [
        {
            "stage": stage,
            "histogram": dict(sorted(Counter(stats.counts[stage]).items())),
            "bucket_hits": dict(sorted(stats.buckets[stage].items())),
            "padding_overhead": stats.padding_overhead(stage),
        }
        for stage in sorted(stats.counts)
    ]
    return BenchReport(rows, dispatch, caveats(reduced.manifest))


def ratio(rows: list[BenchRow], batch: int, baseline: str = "dense") -> float:
    by = {r.name: r for r in rows if r.batch == batch}
    return by["reduced"].images_per_s / by[baseline].images_per_s


def record(bundle: Path | str, report: BenchReport, images: Optional[Path | str] = None) -> Path:
    """Store the measured figures in the bundle (``bench.json``, replacing an earlier record), so
    the speed-up a bundle was measured at travels with it (``tokcompile inspect`` shows it)."""
    import json
    import os
    import platform
    from datetime import datetime, timezone

    from ..outputs import write_file

    bundle = Path(bundle)
    batches = list(dict.fromkeys(r.batch for r in report.rows))
    data = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
        "inputs": str(images) if images is not None else "random",
        "caveats": report.caveats,
        "rows": [r.__dict__ for r in report.rows],
        "speedup_vs_dense": {str(b): round(ratio(report.rows, b), 4) for b in batches},
        "dispatch": report.dispatch,
    }
    return write_file(bundle / BENCH_FILE, json.dumps(data, indent=2, default=str) + "\n", force=True)
