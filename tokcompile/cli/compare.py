"""Compare a bundle with the eager PyTorch model it was built from (Polygraphy).

The reference is the fp32 model for reduced-precision bundles (--reference fp32, the default
there) or the model at the precision the bundle executes (--reference same). Two checks decide
PASSED/FAILED, and a failure names the one that failed and what to try:
  selection  per reduction layer, the share of images whose kept tokens (ToMe: token groups) are
             identical on both sides is at least --min-agreement (a default per precision)
  logits     max |Δlogits| within --atol (a default per precision) on the images whose
             selections agree in every layer
Reported besides: which layers flip and the output effect (feature cosine: mean, p5, min, and
on the flipped images), top-1 agreement (classifiers only). Polygraphy's own report: with -v.

Example:
  tokcompile compare deit_s-evit-fp16
  tokcompile compare deit_s-evit-fp16 --images ../shared/imagenet-sample --batch 8
  tokcompile compare deit_s-evit-fp16 --reference same --weights /models/deit_s.safetensors
"""

from __future__ import annotations

import argparse

from .. import _defaults
from .common import batch_size, fraction, non_negative_float, positive_int, shown
from .eval import add_progress_argument, add_reference_argument, add_weights_argument, progress_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--images", default=None, help="folder of images (default: random inputs)")
    p.add_argument("--batch", type=batch_size, default=None, help=shown("images per batch", _defaults.COMPARE_BATCH))
    p.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=shown("batches to run; all images with --images", _defaults.COMPARE_SAMPLES),
    )
    p.add_argument(
        "--atol",
        type=non_negative_float,
        default=None,
        help=shown("absolute tolerance on logits", ", ".join(f"{k} {v:g}" for k, v in _defaults.COMPARE_ATOL.items())),
    )
    add_reference_argument(p, "eager model (same method)")
    p.add_argument(
        "--min-agreement",
        type=fraction,
        default=None,
        help=shown(
            "per layer, the share of images whose selection must match the reference, in [0, 1]",
            ", ".join(f"{k} {v:g}" for k, v in _defaults.COMPARE_MIN_AGREEMENT.items()),
        ),
    )
    add_weights_argument(p)
    add_progress_argument(p)


def run(args: argparse.Namespace) -> bool:
    from ..verify.compare import compare

    report = compare(
        args.bundle,
        images=args.images,
        batch=args.batch,
        samples=args.samples,
        atol=args.atol,
        reference=args.reference,
        min_agreement=args.min_agreement,
        weights=args.weights,
        progress=progress_of(args),
    )
    for line in report.lines():
        print(line)
    return report.passed
