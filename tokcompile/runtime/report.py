"""``report.md``: the human-readable summary written into every bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def token_table(manifest: dict[str, Any]) -> list[str]:
    if "boundaries" in manifest["tokens"]:  # staged: per-image counts, from calibration
        cal = manifest["tokens"]["calibration"]
        rows = [
            f"Per-image token counts on {cal['images']} calibration images ({cal['source']}):",
            "",
            "| after stage | count output | mean | min | max | buckets |",
            "|---|---|---|---|---|---|",
        ]
        for b in manifest["tokens"]["boundaries"]:
            rows.append(f"| {b['stage']} | {b['output']} | {b['mean']} | {b['min']} | {b['max']} | {b['buckets']} |")
        return rows
    rows = ["| block | attention tokens | MLP tokens |", "|---|---|---|"]
    for b in manifest["tokens"]["blocks"]:
        mark = " ←" if b["mlp"] != b["attention"] else ""
        rows.append(f"| {b['block']} | {b['attention']} | {b['mlp']}{mark} |")
    return rows


def write_report(path: Path, manifest: dict[str, Any]) -> None:
    model, method, g = manifest["model"], manifest["method"], manifest["gmacs"]
    stage = manifest["stages"][0]
    params = ", ".join(f"{k}={v}" for k, v in method["params"].items()) or "-"
    weights = manifest["weights"]
    lines = [
        f"# {model['name']} · {method['name']} · {manifest['precision']}",
        "",
        f"- model: `{model['timm_name']}`, input {model['input_shape']}",
        f"- weights: {weights['source']}"
        + (" (RANDOM: accuracy is meaningless)" if weights["source"] == "random" else ""),
        f"- method: `{method['name']}` ({params})",
        f"- tokens: {' → '.join(map(str, manifest['tokens']['sequence']))}",
        *([f"- WARNING: {manifest['tokens']['warning']}"] if manifest["tokens"].get("warning") else []),
        f"- GMACs: {g['reduced']:.3f} reduced vs {g['dense']:.3f} dense; ideal speed-up {g['ideal_speedup']:.3f}×",
        f"- backend: {manifest['backend']}; {len(manifest['stages'])} stage file(s); ONNX Runtime runs "
        f"`{stage['onnxruntime_file']}`... ({stage['onnxruntime_precision']})",
        "",
        "## Tokens per block",
        "",
        *token_table(manifest),
        "",
        "## Check and measure",
        "",
        "```",
        "tokcompile compare <this directory>",
        "tokcompile bench <this directory> --batch 1,16",
        "polygraphy inspect model model.onnx",
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
