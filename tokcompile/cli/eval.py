"""Evaluate a bundle against its dense model on an image folder.

Runs the bundle and its dense twin (same weights and precision, exported from the manifest) on
the same batches and reports: top-1 accuracy of both when file locations carry ImageNet-1k
labels (DIR/<wnid>/*.JPEG or <wnid>_*.JPEG), top-1 agreement with the dense model, cosine
similarity of the final features, and the throughput of each. Unreadable files are skipped,
counted and reported.

Example:
  tokcompile eval deit_s-evit-fp16 --images ../shared/imagenet-sample
  tokcompile eval deit_s-evit-fp16 --images /data/imagenet/val --batch 32 --limit 5000
"""

from __future__ import annotations

import argparse
from typing import Optional


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 16)")
    p.add_argument("--limit", type=int, default=None, help="at most N images, spread evenly over the sorted files")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
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
    )
    for line in result.lines():
        print(line)
    return True
