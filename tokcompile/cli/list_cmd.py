"""List known models or methods.

Example:
  tokcompile list models
  tokcompile list models --all      # every timm VisionTransformer name tokcompile accepts
  tokcompile list methods
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["models", "methods"], help="what to list")
    p.add_argument("--all", action="store_true", help="models: every timm ViT name, not only the aliases")


def run(args: argparse.Namespace) -> bool:
    if args.what == "methods":
        from ..methods import METHODS

        for m in METHODS.values():
            print(f"{m.name:8} {m.summary}")
        return True
    from ..models.aliases import ALIASES, vit_model_names

    names = vit_model_names()
    if args.all:
        print("\n".join(names))
        return True
    for alias, name in ALIASES.items():
        print(f"{alias:8} {name}")
    print(
        f"and {len(names)} timm VisionTransformer names ('tokcompile list models --all'), e.g. {', '.join(names[:4])}"
    )
    return True
