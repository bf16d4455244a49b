"""Draw what each reduction layer of a bundle kept or merged, on one image.

One panel for the image (the model's preprocessed crop, at the bundle's input size) and one per
reduction layer. EViT, ATS, A-ViT, AdaViT: kept patches in colour, the rest greyed and labelled
with what the method did (EViT: fused into the layer's extra token, tinted and hatched, or
pruned; ATS: not sampled; A-ViT: halted; AdaViT: skipped in this block only; dropped by an
earlier layer: dark grey). ToMe: each group of merged patches painted in its mean colour with its
own outline; unmerged patches as in the image. The maps are the bundle's own outputs
(kept_ids_*/merge_map_*). Random weights and random decision heads are written on the figure.

Example:
  tokcompile show deit_s-evit-fp16 ../shared/imagenet-sample/n01440764_tench.JPEG -o tench.png
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("image", help="image file")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="PNG to write, or an existing folder to write IMAGE-BUNDLE.png into (default ./IMAGE-BUNDLE.png)",
    )


def run(args: argparse.Namespace) -> bool:
    from ..verify.show import show

    result = show(args.bundle, args.image, args.output)
    print(f"wrote {result.output}: {len(result.panels)} panels")
    for title in result.panels:
        print(f"  {title}")
    for tag in result.caveats:
        print(f"note: {tag}: the figure's selections say nothing about the trained model")
    return True
