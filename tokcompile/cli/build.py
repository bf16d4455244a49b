"""Build a bundle: timm model + token-reduction method → ONNX + manifest + report.

Example:
  tokcompile build deit_s --method evit --precision fp16            # writes ./deit_s-evit-fp16/
  tokcompile build deit_t --method evit --keep-rate 0.5 --no-fuse --weights w.safetensors -o out/
  tokcompile build deit_s --method tome --r 16:-1                    # ToMe, (r, inflection) schedule
  tokcompile build deit_s --method ats --calib ../shared/imagenet-sample   # staged, auto buckets
  tokcompile build deit_s --method adavit --weights ada_step_deit_small.pth  # official AdaViT checkpoint
  tokcompile build deit_s --method ats --backend tensorrt --plugin-lib build/libtokcompile_plugins.so
  tokcompile build deit_s --method ats --calib ../shared/imagenet-sample --backend tensorrt-rtx --target-sm 80,86
"""

from __future__ import annotations

import argparse

from .common import model_args


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
    p.add_argument("--img-size", type=int, default=None, help="input resolution (timm img_size), e.g. 224 for DINOv2")
    p.add_argument(
        "--model-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra timm.create_model argument, repeatable (e.g. qk_norm=True)",
    )
    p.add_argument("-o", "--output", default=None, help="bundle directory (default ./MODEL-METHOD-PRECISION)")
    p.add_argument(
        "--backend",
        default=None,
        help="onnxruntime (default) | tensorrt (engines per stage; needs TensorRT and a GPU) | tensorrt-rtx "
        "(TensorRT for RTX engines, built ahead of time on any machine) | auto (tensorrt when available, "
        "else onnxruntime)",
    )
    p.add_argument(
        "--plugins",
        default=None,
        help="on | off | auto (default): token ops TensorRT runs as plugins; auto uses a plugin only where "
        "no native lowering exists (ATS), off none (function bodies only), on every op that has one",
    )
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
    ats = p.add_argument_group("ats (per-image token counts: staged, bucketed bundles)")
    ats.add_argument(
        "--max-tokens", default=None, help="budget K per ATS block, one value or a list (default: all tokens)"
    )
    avit = p.add_argument_group("avit (per-token halting: staged, bucketed bundles)")
    avit.add_argument("--gamma", type=float, default=None, help="halting gate scale γ (default per model: 10)")
    avit.add_argument(
        "--beta", type=float, default=None, help="halting gate center β (default per model: 30 tiny, 75 small)"
    )
    adavit = p.add_argument_group("adavit (per-image head, sub-layer and token skipping: staged bundles)")
    adavit.add_argument("--token-threshold", type=float, default=None, help="keep a token when sigmoid > this (0.6)")
    adavit.add_argument("--head-threshold", type=float, default=None, help="keep a head when sigmoid > this (0.5)")
    adavit.add_argument("--layer-threshold", type=float, default=None, help="run a sub-layer when sigmoid > this (0.5)")
    adavit.add_argument(
        "--keep-layers", type=int, default=None, help="blocks before this one have no head/sub-layer gates (1)"
    )
    staged = p.add_argument_group("staged bundles")
    staged.add_argument("--buckets", default=None, help="auto (default) or token counts for every stage, e.g. 64,128")
    staged.add_argument(
        "--max-buckets", type=int, default=None, help="buckets per stage with --buckets auto (default 4)"
    )
    staged.add_argument(
        "--calib", default=None, help="image folder for token-count calibration (default: random inputs)"
    )
    staged.add_argument(
        "--profile", default=None, help="hardware profile name or YAML for --buckets auto (default cpu-x86-2core)"
    )
    trt = p.add_argument_group("tensorrt, tensorrt-rtx")
    trt.add_argument(
        "--plugin-lib",
        default=None,
        help="TensorRT plugin library (default: $TOKCOMPILE_PLUGIN_LIB, else build/libtokcompile_plugins.so if built)",
    )
    trt.add_argument(
        "--timing-cache",
        default=None,
        help="TensorRT timing cache, read and updated (default: one per GPU and TensorRT version "
        "under ~/.cache/tokcompile)",
    )
    trt.add_argument("--max-batch", type=int, default=None, help="largest batch the engines take (default 64)")
    trt.add_argument(
        "--target-sm",
        default=None,
        help="tensorrt-rtx: compute capabilities to build for, e.g. 80,86 (default: every one the installed "
        "TensorRT for RTX supports from Ampere, 80, on; 75 (Turing) takes fp16 models only)",
    )
    trt.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let TensorRT run fp32 matrix products in TF32 (default off: fp32 bundles stay numerically faithful; "
        "recorded, and used by report.md's engine commands)",
    )
    tome = p.add_argument_group("tome")
    tome.add_argument(
        "--r",
        default=None,
        help="tokens merged per block: 13 (every block), 13,13,8 (per block) or 16:-1 (r:inflection schedule); "
        "default 13. --layers also applies",
    )
    tome.add_argument(
        "--prop-attn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="proportional attention, log(size) key bias (default on)",
    )


def run(args: argparse.Namespace) -> bool:
    from ..api import build

    layers = args.layers.split(",") if args.layers is not None else None
    model_kwargs = model_args(args.model_arg or [])
    if args.img_size is not None:
        model_kwargs["img_size"] = args.img_size
    result = build(
        args.model,
        method=args.method,
        precision=args.precision,
        weights=args.weights,
        output=args.output,
        backend=args.backend,
        force=args.force,
        seed=args.seed,
        model_kwargs=model_kwargs,
        keep_rate=args.keep_rate,
        layers=layers,
        fuse=args.fuse,
        r=args.r,
        prop_attn=args.prop_attn,
        max_tokens=args.max_tokens,
        gamma=args.gamma,
        beta=args.beta,
        token_threshold=args.token_threshold,
        head_threshold=args.head_threshold,
        layer_threshold=args.layer_threshold,
        keep_layers=args.keep_layers,
        buckets=args.buckets,
        max_buckets=args.max_buckets,
        calib=args.calib,
        profile=args.profile,
        plugins=args.plugins,
        plugin_lib=args.plugin_lib,
        timing_cache=args.timing_cache,
        max_batch=args.max_batch,
        target_sm=args.target_sm,
        tf32=args.tf32,
    )
    m = result.manifest
    g = m.gmacs
    print(f"bundle: {result.bundle}")
    print(f"tokens: {' → '.join(map(str, m.tokens.sequence))}")
    print(f"GMACs: {g.reduced:.3f} (dense {g.dense:.3f}, ideal speed-up {g.ideal_speedup:.3f}x)")
    for b in m.tokens.boundaries:
        print(f"stage {b.stage}: tokens mean {b.mean} (min {b.min}, max {b.max}), buckets {b.buckets}")
    if m.tensorrt is not None:
        t = m.tensorrt
        sms = ", ".join(f"sm_{sm}" for sm in t.target_sm or [])
        print(f"{t.flavour} {t.version} for {sms}, TF32 {'on' if m.tf32 else 'off'}: {len(m.stages)} engine(s)")
    if m.weights.source == "random":
        print("WARNING: built with RANDOM weights; pass --weights PATH for a meaningful model")
    return True
