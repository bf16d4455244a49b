"""Sweep a method parameter: build, evaluate and plot one bundle per value.

Each value is checked before anything is built; each point is built into OUT/points/. The
dense model at lower input resolutions (position embeddings resampled from the same weights) is
built into OUT/baselines/ as the baseline a method must beat: by default at most 3 sizes, at the
points' GMACs (--resolutions). Everything is evaluated against the full-resolution dense model
(as 'tokcompile eval' does) and summed up in OUT/results.csv, OUT/results.md and OUT/pareto.png
(y: top-1 accuracy, or the features cosine to the dense model when the images carry no labels or
the weights are random; x: GMACs and measured throughput). Without --images the points run on
random inputs (unrepresentative). An existing OUT/results.csv is replaced only with --force.

Values: start:stop:step (stop included) or a comma list; for --r, ';' separates values that
hold commas or colons themselves (ToMe per-block lists or schedules: --r "16:-1;8:-1").

Example:
  tokcompile sweep deit_s --method evit --keep-rate 0.5:0.9:0.1 --images ../shared/imagenet-sample
  tokcompile sweep deit_s --method tome --r 4:16:4 --images ../shared/imagenet-sample --limit 100
  tokcompile sweep deit_s --method avit --param beta=3:9:3 --images ../shared/imagenet-sample
  tokcompile sweep vit_small_patch14_dinov2 --img-size 224 --keep-rate 0.7 --resolutions 168,182
"""

from __future__ import annotations

import argparse

from .. import _defaults
from .common import add_model_arguments, model_kwargs_of, shown
from .eval import add_progress_argument, progress_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="alias (deit_t, deit_s, ...) or a timm ViT name")
    p.add_argument("--method", default=None, help="token-reduction method (default evit)")
    values = p.add_mutually_exclusive_group(required=True)
    values.add_argument("--keep-rate", default=None, help="EViT keep rates: 0.5:0.9:0.1 or 0.5,0.7 (in (0, 1])")
    values.add_argument("--r", default=None, help="ToMe merges per block: 4:16:4 or 4,8")
    values.add_argument(
        "--param",
        default=None,
        metavar="NAME=VALUES",
        help="any numeric parameter of the method ('tokcompile build --help'), e.g. beta=3:9:3 or head_threshold=0.4,0.5",
    )
    p.add_argument("--images", default=None, help="folder of images (default: random inputs, with a warning)")
    p.add_argument("-o", "--out", default=None, help="output directory (default ./sweep-MODEL-METHOD)")
    p.add_argument("--weights", default=None, help="auto | pretrained | random | PATH, for every point (default auto)")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | bf16 (default fp32)")
    p.add_argument("--batch", type=int, default=None, help=shown("images per batch", _defaults.EVAL_BATCH))
    p.add_argument("--limit", type=int, default=None, help="at most N images per point (random inputs: N images)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier sweep's results and different bundles in OUT"
    )
    add_model_arguments(p)
    p.add_argument(
        "--resolutions",
        default=None,
        help="lower input sizes of the dense baseline: auto (default: at the points' GMACs), none, or sizes in "
        "px (e.g. 160,192)",
    )
    p.add_argument(
        "--resolutions-max", type=int, default=None, help="with --resolutions auto: at most this many sizes (3)"
    )
    add_progress_argument(p)


def method_param(method: str | None, text: str) -> tuple[str, list]:
    """``--param NAME=VALUES`` → (NAME, values), NAME a numeric option the method declares."""
    from ..errors import TokcompileError
    from ..methods import get_method
    from ..verify.sweep import parse_values

    m = get_method(method or _defaults.METHOD)
    name, sep, spec = text.partition("=")
    options = {o.name: o for o in m.options if not o.boolean and o.type in (int, float)}
    if not sep or name.strip() not in options:
        known = ", ".join(options) or "none"
        raise TokcompileError(
            f"--param must be NAME=VALUES with a numeric parameter of '{m.name}' ({known}), got '{text}'"
        )
    kind = "int" if options[name.strip()].type is int else "number"
    return name.strip(), parse_values(spec, f"--param {name.strip()}", kind)


def run(args: argparse.Namespace) -> bool:
    from ..api import build
    from ..verify.sweep import parse_values, sweep
    from ..verify.sweep_results import caveat_lines

    if args.keep_rate is not None:
        param, values = "keep_rate", parse_values(args.keep_rate, "--keep-rate", "rate")
    elif args.r is not None:
        param, values = "r", parse_values(args.r, "--r", "int")
    else:
        param, values = method_param(args.method, args.param)
    result = sweep(
        build,
        args.model,
        param,
        values,
        method=args.method,
        images=args.images,
        output=args.out,
        weights=args.weights,
        precision=args.precision,
        batch=args.batch,
        limit=args.limit,
        force=args.force,
        progress=progress_of(args),
        threads=args.threads,
        model_kwargs=model_kwargs_of(args),
        resolutions=args.resolutions,
        max_resolutions=args.resolutions_max,
    )
    rows = result.rows()
    width = max(len("tokens"), *(len(r["tokens"]) for r in rows))
    print(
        f"{'series':>16} {param:>10} {'tokens':>{width}} {'GMACs':>6} {'top-1':>7} {'agree':>7} {'cosine':>7} "
        f"{'cos p5':>7} {'img/s':>8} {'speed-up':>8}  Pareto"
    )
    for row in rows:
        pct = ["-" if row[k] is None else f"{row[k]:.2%}" for k in ("top1", "agreement")]
        cos = ["-" if row[k] is None else f"{row[k]:.4f}" for k in ("cosine_mean", "cosine_p5")]
        print(
            f"{row['series']:>16} {result.label(row):>10} {row['tokens']:>{width}} {row['gmacs']:>6.3f} "
            f"{pct[0]:>7} {pct[1]:>7} {cos[0]:>7} {cos[1]:>7} {row['images_per_s']:>8.1f} "
            f"{row['speedup']:>7.2f}x  {'*' if row['pareto'] else ''}"
        )
    for note in caveat_lines(result):
        print(note)
    for path in result.files:
        print(f"wrote {path}")
    return True
