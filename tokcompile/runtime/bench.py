"""``tokcompile bench``: the bundle against the dense model, interleaved in one run.

The dense model is rebuilt from the bundle's manifest (same weights, same precision, same
export path, method ``none``), so the ratio isolates token reduction. Runs alternate
reduced/dense (and swap order every iteration) so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import _defaults
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


def dense_runner(bundle: Path, threads: Optional[int] = None):
    """Export the bundle's dense twin to a temporary file and return an ONNX Runtime runner."""
    from ..api import rebuild
    from ..backends import onnxruntime as ort_backend
    from ..export.onnx import onnx_from_graph_module
    from ..passes.output_kept_indices import output_names
    from .bundle import read_manifest

    manifest = read_manifest(bundle)
    stage = manifest["stages"][0]
    gm, spec, _ = rebuild(manifest, method="none", precision=stage["onnxruntime_precision"])
    tmp = Path(tempfile.mkdtemp(prefix="tokcompile-dense-"))
    path = tmp / "dense.onnx"
    onnx_from_graph_module(gm, spec.input_shape, path, output_names(gm))
    return ort_backend.load(path, threads)


def bench(
    bundle: Path | str,
    batches: Optional[Sequence[int]] = None,
    iters: Optional[int] = None,
    warmup: Optional[int] = None,
    threads: Optional[int] = None,
    seed: int = 0,
) -> list[BenchRow]:
    bundle = Path(bundle)
    batches = tuple(batches or _defaults.BENCH_BATCHES)
    iters = iters or _defaults.BENCH_ITERS
    warmup = _defaults.BENCH_WARMUP if warmup is None else warmup
    reduced = load(bundle, threads)
    dense = dense_runner(bundle, threads)
    runs = {"reduced": lambda x: reduced.backend(x, ["logits"]), "dense": lambda x: dense(x, ["logits"])}
    rng = np.random.default_rng(seed)
    rows: list[BenchRow] = []
    for batch in batches:
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
    return rows


def ratio(rows: list[BenchRow], batch: int) -> float:
    by = {r.name: r for r in rows if r.batch == batch}
    return by["reduced"].images_per_s / by["dense"].images_per_s
