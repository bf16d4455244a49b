"""TensorRT for RTX builds of every method: build seconds, engine MB and TensorRT layers vs dense.

Builds each method's bundle through ``tokcompile.build(..., backend="tensorrt-rtx")`` (ahead of
time, no GPU needed) and prints, per method and precision: the total build time, the engine
build time (sum over stages), the engines' size (sum over stages) and the TensorRT network
layers (sum over stages, as parsed from the ONNX files) with their ratio to the dense model
(``none``). Adaptive methods calibrate their buckets on real photographs (default
``../shared/imagenet-sample``). Random weights: the figures measure graphs and engines, not
accuracy. A method whose build fails prints TensorRT's one-line error instead.

    python benchmarks/trt_rtx_build.py                               # deit_t, every method, fp32 and fp16, sm_80
    python benchmarks/trt_rtx_build.py --methods none,evit --precisions fp16 --target-sm 80,86,89
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tokcompile
from tokcompile import TokcompileError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"
STAGED = ("ats", "avit", "adavit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_t")
    p.add_argument("--methods", default="none,evit,tome,ats,avit,adavit")
    p.add_argument("--precisions", default="fp32,fp16")
    p.add_argument("--target-sm", default="80")
    p.add_argument("--calib", default=str(SAMPLE), help="images for the adaptive methods' buckets")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            dense_layers = None
            for method in args.methods.split(","):
                out = Path(tmp) / f"{method}-{precision}"
                start = time.perf_counter()
                try:
                    result = tokcompile.build(
                        args.model,
                        method=method,
                        precision=precision,
                        weights="random",
                        output=out,
                        backend="tensorrt-rtx",
                        target_sm=args.target_sm,
                        **({"calib": args.calib} if method in STAGED else {}),
                    )
                except TokcompileError as exc:
                    rows.append(f"| {method} | {precision} | FAILED after {time.perf_counter() - start:.0f} s: {exc} |")
                    continue
                stages = result.manifest.stages
                engines = [s.engine for s in stages]  # a tensorrt-rtx build gives every stage one
                layers = sum(e.layers for e in engines)
                megabytes = sum((out / e.file).stat().st_size for e in engines) / 1e6
                engine_seconds = sum(e.build_seconds for e in engines)
                if method == "none":
                    dense_layers = layers
                vs = f"{layers / dense_layers:.2f}x" if dense_layers else "-"
                rows.append(
                    f"| {method} | {precision} | {len(stages)} | {result.seconds:.1f} | {engine_seconds:.1f} | "
                    f"{megabytes:.1f} | {layers} | {vs} |"
                )
                print(rows[-1], flush=True)
    print(f"\n{args.model}, TensorRT for RTX, --target-sm {args.target_sm}")
    print("| method | precision | stages | build s (total) | engine build s | engine MB | TensorRT layers | vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
