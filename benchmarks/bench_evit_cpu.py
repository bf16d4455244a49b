"""CPU throughput of EViT vs dense, ONNX Runtime, side by side in one run.

Builds (into a temporary directory) the EViT bundle of a model with random weights and runs
``tokcompile.runtime.bench`` on it, which times the bundle and the dense model of the same
weights, precision and export path, interleaved. Prints img/s, latency percentiles and the
throughput ratio next to the ideal (GMAC) ratio.

    python benchmarks/bench_evit_cpu.py                       # DeiT-S, fp32, batch 16
    python benchmarks/bench_evit_cpu.py --model deit_t --batch 1,16 --iters 30

Issue goal (DeiT-S, keep 0.7, fuse, fp32, batch 16): ratio ≥ 1.45 (GMAC ratio 1.518).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import tokcompile
from tokcompile.cli.common import int_list
from tokcompile.runtime.bench import bench, ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_s")
    p.add_argument("--keep-rate", type=float, default=0.7)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch", default="16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle"
        result = tokcompile.build(
            args.model, method="evit", precision=args.precision, weights="random", output=out, keep_rate=args.keep_rate
        )
        rows = bench(out, batches=int_list(args.batch, "--batch"), iters=args.iters, threads=args.threads).rows
    ideal = result.manifest.gmacs.ideal_speedup
    print(f"{args.model} evit keep {args.keep_rate} {args.precision}, ONNX Runtime CPU, {args.iters} interleaved runs")
    print(f"{'batch':>5} {'model':>8} {'img/s':>9} {'p50 ms':>8} {'p90 ms':>8}")
    for r in rows:
        print(f"{r.batch:>5} {r.name:>8} {r.images_per_s:>9.2f} {r.p50_ms:>8.1f} {r.p90_ms:>8.1f}")
    for batch in dict.fromkeys(r.batch for r in rows):
        print(f"batch {batch}: throughput ratio reduced/dense {ratio(rows, batch):.3f} (ideal GMAC ratio {ideal:.3f})")


if __name__ == "__main__":
    main()
