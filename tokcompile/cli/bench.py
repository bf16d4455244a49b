"""Benchmark a bundle against its dense model, interleaved in one run.

--images feeds photos preprocessed at the bundle's input size (token counts of staged bundles
depend on the content); random inputs otherwise. Random weights and random decision heads are
tagged on every ratio.

The figures are stored in the bundle as bench.json (not hashed: nothing in it runs), which
'tokcompile inspect' shows; --no-record leaves the bundle as it is.

Example:
  tokcompile bench deit_s-evit-fp16 --batch 1,16
  tokcompile bench deit_s-ats-fp32 --images ../shared/imagenet-sample --batch 16
"""

from __future__ import annotations

import argparse

from .. import _defaults
from ..runtime.caveats import tagged
from .common import int_list, non_negative_int, positive_int, shown
from .eval import add_weights_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument(
        "--batch",
        default=None,
        help=shown(f"comma-separated batch sizes, each ≤ {_defaults.MAX_BATCH}", _defaults.BENCH_BATCHES),
    )
    p.add_argument(
        "--iters", type=positive_int, default=None, help=shown("timed runs per model and batch", _defaults.BENCH_ITERS)
    )
    p.add_argument(
        "--warmup", type=non_negative_int, default=None, help=shown("untimed runs first", _defaults.BENCH_WARMUP)
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--images", default=None, help="folder of images to feed (default: random inputs)")
    p.add_argument(
        "--no-record", action="store_true", help="do not store the figures in the bundle (default: BUNDLE/bench.json)"
    )
    add_weights_argument(p)


def run(args: argparse.Namespace) -> bool:
    from ..runtime.bench import bench, ratio, record

    batches = int_list(args.batch, "--batch") if args.batch else None
    report = bench(
        args.bundle,
        batches=batches,
        iters=args.iters,
        warmup=args.warmup,
        threads=args.threads,
        images=args.images,
        weights=args.weights,
    )
    rows = report.rows
    print(f"{'batch':>5} {'model':>8} {'img/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r.batch:>5} {r.name:>8} {r.images_per_s:>9.1f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f}")
    for batch in dict.fromkeys(r.batch for r in rows):
        line = f"batch {batch}: reduced/dense throughput ratio {ratio(rows, batch):.3f}x"
        if any(r.name == "masked" for r in rows):
            line += f", reduced/masked {ratio(rows, batch, 'masked'):.3f}x"
        print(tagged(line, report.caveats))
    for d in report.dispatch:
        hist = " ".join(f"{n}:{c}" for n, c in d["histogram"].items())
        hits = ", ".join(f"{b}×{c}" for b, c in d["bucket_hits"].items())
        line = f"stage {d['stage']}: tokens {hist} | buckets {hits} | padding overhead {d['padding_overhead']:.1%}"
        print(tagged(line, report.caveats))
    if not args.no_record:
        print(f"recorded in {record(args.bundle, report, args.images)}")
    return True
