"""Draw what each reduction layer of a bundle kept or merged, on one image.

One panel for the image (the model's preprocessed crop) and one per reduction layer. EViT:
kept patches in colour, the rest greyed (fused into the layer's extra token: tinted and
hatched; dropped by an earlier layer: dark grey). ToMe: each group of merged patches painted
in its mean colour with its own outline; unmerged patches as in the image. The maps are the
bundle's own outputs (kept_ids_*/merge_map_*).

Example:
  tokcompile show deit_s-evit-fp16 ../shared/imagenet-sample/n01440764_tench.JPEG -o tench.png
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("image", help="image file")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default ./IMAGE-BUNDLE.png)")


def run(args: argparse.Namespace) -> bool:
    from ..verify.show import show

    result = show(args.bundle, args.image, args.output)
    print(f"wrote {result.output}: {len(result.panels)} panels")
    for title in result.panels:
        print(f"  {title}")
    return True
