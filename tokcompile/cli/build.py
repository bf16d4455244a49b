"""Build a bundle: timm model + token-reduction method → ONNX + manifest + report.

Example:
  tokcompile build deit_s --method evit --precision fp16            # writes ./deit_s-evit-fp16/
  tokcompile build deit_t --method evit --keep-rate 0.5 --no-fuse --weights w.safetensors -o out/
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="alias (deit_t, deit_s, deit_b, vit_s16, vit_b16) or a timm ViT name")
    p.add_argument(
        "--method", default=None, help="token-reduction method (default evit; see 'tokcompile list methods')"
    )
    p.add_argument("--precision", default=None, help="fp32 | fp16 | bf16 (default fp32)")
    p.add_argument(
        "--weights", default=None, help="auto | pretrained | random | PATH (.safetensors/.pth/.pt); default auto"
    )
    p.add_argument("--seed", type=int, default=None, help="seed for --weights random (default 0)")
    p.add_argument("-o", "--output", default=None, help="bundle directory (default ./MODEL-METHOD-PRECISION)")
    p.add_argument("--backend", default=None, help="onnxruntime (default)")
    p.add_argument("--force", action="store_true", help="replace an existing, different bundle at --output")
    evit = p.add_argument_group("evit")
    evit.add_argument(
        "--keep-rate", type=float, default=None, help="fraction of tokens kept per layer, in (0, 1] (default 0.7)"
    )
    evit.add_argument(
        "--layers", default=None, help="0-based blocks that reduce, e.g. 3,6,9 (default: 3,6,9 scaled to depth)"
    )
    evit.add_argument(
        "--fuse", action=argparse.BooleanOptionalAction, default=None, help="fuse dropped tokens into one (default on)"
    )


def run(args: argparse.Namespace) -> bool:
    from ..api import build

    layers = args.layers.split(",") if args.layers is not None else None
    result = build(
        args.model,
        method=args.method,
        precision=args.precision,
        weights=args.weights,
        output=args.output,
        backend=args.backend,
        force=args.force,
        seed=args.seed,
        keep_rate=args.keep_rate,
        layers=layers,
        fuse=args.fuse,
    )
    m = result.manifest
    g = m["gmacs"]
    print(f"bundle: {result.bundle}")
    print(f"tokens: {' → '.join(map(str, m['tokens']['sequence']))}")
    print(f"GMACs: {g['reduced']:.3f} (dense {g['dense']:.3f}, ideal speed-up {g['ideal_speedup']:.3f}x)")
    if m["weights"]["source"] == "random":
        print("WARNING: built with RANDOM weights; pass --weights PATH for a meaningful model")
    return True
