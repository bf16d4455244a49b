"""Measure a hardware profile (latency of one ViT block vs token count) on this machine.

Writes a profile YAML that `--buckets auto` uses to choose token-count buckets.

Example:
  tokcompile profile --target mycpu                      # writes ./mycpu.yaml
  tokcompile profile --target mycpu --widths 192,384 --batch 1,16 --tokens 8:256:8 -o profiles/mycpu.yaml
  tokcompile build deit_s --method ats --profile profiles/mycpu.yaml
"""

from __future__ import annotations

import argparse

from .. import _defaults
from .common import int_list, shown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="profile name to write (e.g. cpu-2core)")
    p.add_argument("-o", "--output", default=None, help="YAML path (default ./<target>.yaml)")
    p.add_argument(
        "--widths",
        default=_defaults.PROFILE_WIDTHS,
        help=shown("model widths, heads = width/64", _defaults.PROFILE_WIDTHS),
    )
    p.add_argument("--batch", default=_defaults.PROFILE_BATCHES, help=shown("batch sizes", _defaults.PROFILE_BATCHES))
    p.add_argument(
        "--tokens",
        default=_defaults.PROFILE_TOKENS,
        help=shown("token counts START:STOP:STEP or a list", _defaults.PROFILE_TOKENS),
    )
    p.add_argument(
        "--iters",
        type=int,
        default=_defaults.PROFILE_ITERS,
        help=shown("timed runs per point (median)", _defaults.PROFILE_ITERS),
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace an existing profile file at -o")


def token_grid(text: str) -> list[int]:
    from ..errors import TokcompileError

    if ":" in text:
        try:
            start, stop, step = (int(v) for v in text.split(":"))
        except ValueError:
            raise TokcompileError(f"--tokens must be START:STOP:STEP integers or a list, got '{text}'") from None
        if step < 1 or start < 2 or stop < start:
            raise TokcompileError(f"--tokens range '{text}' is empty or starts below 2 tokens")
        return list(range(start, stop + 1, step))
    values = int_list(text, "--tokens")
    if len(values) < 2 or any(b <= a for a, b in zip(values, values[1:])):
        raise TokcompileError(f"--tokens must list at least two increasing counts, got '{text}'")
    return values


def run(args: argparse.Namespace) -> bool:
    from datetime import datetime, timezone
    from pathlib import Path

    import onnxruntime

    from .._version import __version__
    from ..errors import TokcompileError
    from ..outputs import check_file
    from ..profiles import Profile, save_profile
    from ..profiles.measure import cpu_target, measure_curve

    widths, batches, tokens = (
        int_list(args.widths, "--widths"),
        int_list(args.batch, "--batch"),
        token_grid(args.tokens),
    )
    if args.iters < 1:
        raise TokcompileError(f"--iters must be ≥ 1 (timed runs per point), got {args.iters}")
    if args.threads is not None and args.threads < 1:
        raise TokcompileError(f"--threads must be ≥ 1, got {args.threads}")
    out = Path(args.output or f"{args.target}.yaml")
    check_file(out, args.force)  # before minutes of measuring
    curves = [measure_curve(w, max(1, w // 64), b, tokens, args.iters, args.threads) for w in widths for b in batches]
    profile = Profile(
        name=args.target,
        measured=True,
        backend="onnxruntime",
        target=cpu_target(),
        alignment=1,
        curves=curves,
        measured_with={
            "tokcompile": __version__,
            "onnxruntime": onnxruntime.__version__,
            "date": datetime.now(timezone.utc).date().isoformat(),
            "threads": args.threads or "all",
        },
    )
    save_profile(profile, out, args.force)
    print(f"profile: {out} ({len(curves)} curves, {len(tokens)} token counts each)")
    return True
