"""Compare a bundle with the eager PyTorch model it was built from (Polygraphy).

Reports max/mean |Δlogits|, top-1 agreement and, per reduction layer, how often both kept the
same tokens. Exit 0 within tolerance, 1 otherwise.

Example:
  tokcompile compare deit_s-evit-fp16
  tokcompile compare deit_s-evit-fp16 --images ../shared/imagenet-sample --batch 8
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--images", default=None, help="folder of images (default: random inputs)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 4)")
    p.add_argument("--samples", type=int, default=None, help="batches to run (default 2; all images with --images)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance on logits (default per precision)")


def run(args: argparse.Namespace) -> bool:
    from ..verify.compare import compare

    report = compare(args.bundle, images=args.images, batch=args.batch, samples=args.samples, atol=args.atol)
    for line in report.lines():
        print(line)
    return report.passed
