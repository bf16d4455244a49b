"""Evaluate a bundle against its dense model on an image folder.

Runs the bundle and its dense twin (same weights, exported from the manifest) on the same
batches, images preprocessed at the bundle's input size, and reports: top-1 accuracy of both
when file locations carry ImageNet-1k labels (DIR/<wnid>/*.JPEG or <wnid>_*.JPEG), top-1
agreement with the dense model (classifiers only), cosine similarity of the final features
(mean, p5, min), and the throughput of each. The quality reference is the fp32 dense model for
fp16/bf16 bundles (--reference fp32, default there) or the dense model at the bundle's
precision (--reference same); throughput is always compared at the bundle's precision.
Unreadable files are skipped, counted and reported. Random weights and random decision heads
are tagged on every figure.

Example:
  tokcompile eval deit_s-evit-fp16 --images ../shared/imagenet-sample
  tokcompile eval deit_s-evit-fp16 --images /data/imagenet/val --batch 32 --limit 5000
"""

from __future__ import annotations

import argparse
from typing import Optional

from .. import _defaults


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: on a terminal, off with -q)",
    )


def progress_of(args: argparse.Namespace) -> Optional[bool]:
    """--progress/--no-progress wins; -q turns bars off; otherwise None (tqdm: only on a terminal)."""
    if args.progress is not None:
        return args.progress
    return False if getattr(args, "quiet", False) else None


def add_weights_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="checkpoint the bundle was built from, where the path in its manifest does not exist on "
        "this machine (checked against the recorded digest)",
    )


def add_reference_argument(p: argparse.ArgumentParser, model: str = "dense model") -> None:
    p.add_argument(
        "--reference",
        choices=("fp32", "same"),
        default=None,
        help=f"fp32: the fp32 {model} (default for fp16/bf16 bundles); same: the {model} at the bundle's precision",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import batch_size, shown

    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--batch", type=batch_size, default=None, help=shown("images per batch", _defaults.EVAL_BATCH))
    p.add_argument("--limit", type=int, default=None, help="at most N images, spread evenly over the sorted files")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    add_reference_argument(p)
    add_weights_argument(p)
    add_progress_argument(p)


def run(args: argparse.Namespace) -> bool:
    from ..verify.evaluate import evaluate

    result = evaluate(
        args.bundle,
        images=args.images,
        batch=args.batch,
        limit=args.limit,
        progress=progress_of(args),
        threads=args.threads,
        reference=args.reference,
        weights=args.weights,
    )
    for line in result.lines():
        print(line)
    return True
