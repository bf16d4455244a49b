"""Show what a bundle holds: per-layer tokens, GMACs, ideal speed-up, files.

Example:
  tokcompile inspect deit_s-evit-fp16
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")


def run(args: argparse.Namespace) -> bool:
    import json
    from pathlib import Path

    from ..runtime.bench import BENCH_FILE
    from ..runtime.bundle import read_manifest
    from ..runtime.report import format_size, token_table

    m = read_manifest(args.bundle)
    params = ", ".join(f"{k}={v}" for k, v in m.method.params.items()) or "-"
    g = m.gmacs
    print(f"model:     {m.model.name} ({m.model.timm_name}), weights {m.weights.source}")
    print(f"method:    {m.method.name} ({params})")
    print(f"precision: {m.precision}, backend {m.backend}")
    print(f"tokens:    {' → '.join(map(str, m.tokens.sequence))}")
    print(f"GMACs:     {g.reduced:.3f} reduced, {g.dense:.3f} dense, ideal speed-up {g.ideal_speedup:.3f}x")
    print("\n".join(token_table(m)))
    bench = Path(args.bundle) / BENCH_FILE
    if bench.is_file():
        try:
            measured = json.loads(bench.read_text())
            ratios = ", ".join(f"{v:.3f}x at batch {b}" for b, v in measured["speedup_vs_dense"].items())
            caveats = f" [{', '.join(measured['caveats'])}]" if measured.get("caveats") else ""
            print(f"measured:  reduced/dense {ratios} ({measured['measured']}, {measured['inputs']} inputs){caveats}")
        except (ValueError, KeyError, TypeError, AttributeError):
            print(f"measured:  {BENCH_FILE} is unreadable; run 'tokcompile bench' again")
    else:
        print("measured:  not yet ('tokcompile bench' measures and records it)")
    print("files (sha256 verified):")
    for name, entry in m.files.items():
        print(f"  {name:24} {format_size(entry.bytes):>10}  {entry.sha256[:16]}")
    return True
