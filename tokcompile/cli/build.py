"""Build a bundle: timm model + token-reduction method → ONNX + manifest + report.

Example:
  tokcompile build deit_s --method evit --precision fp16            # writes ./deit_s-evit-fp16/
  tokcompile build deit_t --method evit --keep-rate 0.5 --no-fuse --weights w.safetensors -o out/
  tokcompile build deit_s --method tome --r 16:-1                    # ToMe, (r, inflection) schedule
  tokcompile build deit_s --method ats --calib ../shared/imagenet-sample   # staged, auto buckets
  tokcompile build deit_s --method adavit --weights ada_step_deit_small.pth  # official AdaViT checkpoint
  tokcompile build deit_s --method ats --backend tensorrt --plugin-lib build/libtokcompile_plugins.so
  tokcompile build deit_s --method ats --calib ../shared/imagenet-sample --backend tensorrt-rtx --target-sm 80,86

Every flag is checked before the model's weights load: a mistake costs a second, not a build.
"""

from __future__ import annotations

import argparse

from .. import _defaults
from .common import add_method_options, add_model_arguments, model_kwargs_of, shown

# Flags that are BuildConfig.resolve keywords as they are (argparse dest = keyword).
BUILD_KEYWORDS = (
    "method",
    "precision",
    "weights",
    "seed",
    "output",
    "backend",
    "force",
    "plugins",
    "plugin_lib",
    "timing_cache",
    "max_batch",
    "target_sm",
    "tf32",
    "buckets",
    "max_buckets",
    "calib",
    "profile",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="alias (deit_t, deit_s, deit_b, vit_s16, vit_b16) or a timm ViT name")
    p.add_argument("--method", help=shown("token-reduction method ('tokcompile list methods')", _defaults.METHOD))
    p.add_argument("--precision", help=shown("fp32 | fp16 | bf16", _defaults.PRECISION))
    model = p.add_argument_group("model")
    model.add_argument(
        "--weights", help=shown("auto | pretrained | random | PATH (.safetensors, .pth, .pt)", _defaults.WEIGHTS)
    )
    model.add_argument("--seed", type=int, help=shown("seed of --weights random", _defaults.SEED))
    add_model_arguments(model)
    output = p.add_argument_group("output")
    output.add_argument("-o", "--output", help="bundle directory (default ./MODEL-METHOD-PRECISION)")
    output.add_argument("--force", action="store_true", help="replace a different bundle tokcompile wrote at -o")
    p.set_defaults(method_params=add_method_options(p))
    staged = p.add_argument_group("staged bundles (methods with per-image token counts)")
    staged.add_argument("--buckets", help=shown("'auto' or token counts used at every stage, e.g. 64,128", "auto"))
    staged.add_argument(
        "--max-buckets", type=int, help=shown("buckets per stage with --buckets auto", _defaults.MAX_BUCKETS)
    )
    staged.add_argument(
        "--calib", help="image folder for token-count calibration (default: RANDOM inputs, flagged in the bundle)"
    )
    staged.add_argument("--profile", help=shown("hardware profile name or YAML for --buckets auto", _defaults.PROFILE))
    backend = p.add_argument_group("backend")
    backend.add_argument(
        "--backend",
        help=shown(
            "onnxruntime | tensorrt (engines per stage; needs TensorRT and a GPU) | tensorrt-rtx (TensorRT for "
            "RTX engines, built ahead of time on any machine) | auto (tensorrt where it runs, else onnxruntime)",
            _defaults.BACKEND,
        ),
    )
    backend.add_argument(
        "--plugins",
        help=shown(
            "on | off | auto: token ops TensorRT runs as plugins; auto only where no native lowering exists, "
            "off none (function bodies only), on every op that has one",
            _defaults.PLUGINS,
        ),
    )
    backend.add_argument(
        "--plugin-lib",
        help=f"TensorRT plugin library (default ${_defaults.PLUGIN_LIB_ENV}, else build/{_defaults.PLUGIN_LIBRARY})",
    )
    backend.add_argument(
        "--timing-cache",
        help=f"TensorRT timing cache, read and updated (default one per GPU and version under {_defaults.TRT_CACHE_DIR})",
    )
    backend.add_argument("--max-batch", type=int, help=shown("largest batch the engines take", _defaults.TRT_MAX_BATCH))
    backend.add_argument(
        "--target-sm",
        help="tensorrt-rtx: compute capabilities to build for, e.g. 80,86 (default every one the installed "
        f"TensorRT for RTX supports from {_defaults.RTX_MIN_DEFAULT_SM} on; 75 takes fp16 models only)",
    )
    backend.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        help=shown(
            "let TensorRT run fp32 matrix products in TF32 (off keeps fp32 bundles numerically faithful; "
            "recorded, and used by the bundle's engine commands)",
            _defaults.TRT_TF32,
        ),
    )


def run(args: argparse.Namespace) -> bool:
    from ..api import build
    from ..config import BuildConfig

    params = {name: getattr(args, name) for name in args.method_params if getattr(args, name) is not None}
    keywords = {name: getattr(args, name) for name in BUILD_KEYWORDS if getattr(args, name) is not None}
    config = BuildConfig.resolve(args.model, model_kwargs=model_kwargs_of(args), **keywords, **params)
    result = build(config)
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
