"""CPU throughput of an adaptive bundle (ATS, A-ViT, AdaViT): staged + bucketed vs masked vs dense, one run.

Their token counts depend on the image, so this feeds real photographs (default
``../shared/imagenet-sample``) for calibration and timing. No pretrained weights can be
downloaded here, so the model has random weights whose q/k projections are scaled by
``--qk-scale`` (default 4, as in the methods-reference verification runs): with timm's plain
random init the attention is nearly uniform and ATS keeps almost every token, which says
nothing about the runtime. A-ViT's halting needs its fine-tuned channel 0; on random weights
``--beta 3`` (instead of the released 75) makes tokens halt. AdaViT's decision heads are random
(the official initialisation; no checkpoint is reachable here). The figures therefore measure the
execution machinery (stages, buckets, masking), not the methods' accuracy.

    python benchmarks/bench_adaptive_cpu.py                             # ATS, DeiT-S, fp32, batch 16
    python benchmarks/bench_adaptive_cpu.py --method avit --gamma 10 --beta 3
    python benchmarks/bench_adaptive_cpu.py --method adavit

Issue goal: bucketed execution ≥ 1.3× faster than masked execution at equal outputs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import tokcompile
from tokcompile.cli.common import int_list
from tokcompile.data.images import image_batches, preprocessing
from tokcompile.models import create_model
from tokcompile.runtime.bench import bench, ratio, twin_runner

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_s")
    p.add_argument("--method", default="ats", choices=["ats", "avit", "adavit"])
    p.add_argument("--gamma", type=float, default=None)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--images", default=str(SAMPLE))
    p.add_argument("--batch", default="16")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--buckets", default="auto")
    p.add_argument("--qk-scale", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    model, spec, _, _ = create_model(args.model, weights="random")
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * spec.embed_dim] *= args.qk_scale
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        out = Path(tmp) / "bundle"
        result = tokcompile.build(
            args.model,
            method=args.method,
            weights=str(weights),
            output=out,
            calib=args.images,
            buckets=args.buckets,
            **({"gamma": args.gamma, "beta": args.beta} if args.method == "avit" else {}),
        )
        report = bench(
            out, batches=int_list(args.batch, "--batch"), iters=args.iters, threads=args.threads, images=args.images
        )
        runner = tokcompile.load(out)
        masked_twin = twin_runner(out, None, args.threads)
        x = np.concatenate(list(image_batches(args.images, preprocessing(spec.name, spec.input_shape), 16, limit=16)))
        diff = np.abs(runner(x) - masked_twin(x, ["logits"])["logits"]).max()
    m = result.manifest
    print(
        f"{args.model} {args.method} {m.method.params}, random weights (q/k ×{args.qk_scale}), fp32, ONNX Runtime CPU, "
        f"{args.iters} interleaved runs"
    )
    print(f"mean tokens per stage (calibration): {' → '.join(map(str, m.tokens.sequence))}")
    print(f"GMACs {m.gmacs.reduced:.3f} vs dense {m.gmacs.dense:.3f} (ideal {m.gmacs.ideal_speedup:.3f}x)")
    print(f"{'batch':>5} {'model':>8} {'img/s':>9} {'p50 ms':>8} {'p90 ms':>8}")
    for r in report.rows:
        print(f"{r.batch:>5} {r.name:>8} {r.images_per_s:>9.2f} {r.p50_ms:>8.1f} {r.p90_ms:>8.1f}")
    for batch in dict.fromkeys(r.batch for r in report.rows):
        print(
            f"batch {batch}: bucketed/masked {ratio(report.rows, batch, 'masked'):.3f}x, bucketed/dense {ratio(report.rows, batch):.3f}x"
        )
    for d in report.dispatch:
        print(f"stage {d['stage']}: buckets used {d['bucket_hits']}, padding overhead {d['padding_overhead']:.1%}")
    print(f"max |Δlogits| bucketed vs masked on 16 images: {diff:.2e}")


if __name__ == "__main__":
    main()
