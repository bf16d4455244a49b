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


def format_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def write_report(path: Path, manifest: dict[str, Any]) -> None:
    """``report.md`` from the manifest; ``manifest["files"]`` holds every file but the report."""
    model, method, g = manifest["model"], manifest["method"], manifest["gmacs"]
    stages = manifest["stages"]
    params = ", ".join(f"{k}={v}" for k, v in method["params"].items()) or "-"
    weights = manifest["weights"]
    ort_files = sorted({s["onnxruntime_file"] for s in stages})
    ort_precision = stages[0]["onnxruntime_precision"]
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    calibration = manifest["tokens"].get("calibration")
    lines = [
        f"# {model['name']} · {method['name']} · {manifest['precision']}",
        "",
        f"- model: `{model['timm_name']}`, input {model['input_shape']}"
        + (f", model arguments {model['kwargs']}" if model.get("kwargs") else ""),
        f"- weights: {weights['source']}"
        + (" (RANDOM: accuracy is meaningless)" if weights["source"] == "random" else "")
        + (f", `{weights['path']}`" if weights.get("path") else ""),
        f"- method: `{method['name']}` ({params})",
        *(f"- WARNING: {w}" for w in method.get("warnings", [])),
        f"- tokens: {' → '.join(map(str, manifest['tokens']['sequence']))}",
        *([f"- WARNING: {manifest['tokens']['warning']}"] if manifest["tokens"].get("warning") else []),
        f"- GMACs: {g['reduced']:.3f} reduced vs {g['dense']:.3f} dense; ideal speed-up {g['ideal_speedup']:.3f}×",
        *(
            [
                f"- buckets: chosen for profile `{calibration['profile']}` from {calibration['images']} calibration "
                f"images ({calibration['source']})"
            ]
            if calibration and calibration.get("profile")
            else []
        ),
        f"- backend: {manifest['backend']}; {len(stages)} stage file(s); ONNX Runtime runs "
        f"{', '.join(f'`{f}`' for f in ort_files[:3])}{', ...' if len(ort_files) > 3 else ''} ({ort_precision})",
        f"- built {manifest.get('created', '?')} in {manifest.get('build_seconds', '?')} s with {versions}",
        "- measured speed: `tokcompile bench <this directory>` measures it and stores it in `bench.json`",
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
        *(f"polygraphy inspect model {s['file']}" for s in manifest["stages"]),
        "```",
        "",
        "## Files",
        "",
        "| file | size | sha256 |",
        "|---|---|---|",
        *(
            f"| `{name}` | {format_size(e['bytes'])} | `{e['sha256'][:16]}…` |"
            for name, e in manifest.get("files", {}).items()
        ),
        "",
        *deployment_section(manifest),
    ]
    path.write_text("\n".join(lines))


def deployment_section(manifest: dict[str, Any]) -> list[str]:
    """Lowering, per-stage TensorRT engine commands (TensorRT bundles) and plugin loading."""
    from .commands import (
        flavour,
        plugin_loading,
        polygraphy_command,
        stage_profiles,
        tensorrt_rtx_command,
        tf32,
        trtexec_command,
    )

    lowering = manifest.get("lowering") or {}
    lines = []
    if lowering:
        plugin = ", ".join(f"{k}×{v}" for k, v in (lowering.get("plugin_nodes") or {}).items()) or "none"
        native = ", ".join(f"{k}×{v}" for k, v in (lowering.get("native_nodes") or {}).items()) or "none"
        lines += [
            "## Lowering",
            "",
            f"- `--plugins {lowering.get('requested', lowering.get('plugins'))}`"
            + (f" (exported as `{lowering['plugins']}` for this backend)" if "requested" in lowering else "")
            + f": TensorRT plugin nodes {plugin}; native (function body) {native}",
            "",
        ]
    built = flavour(manifest)
    planned = built is None and all(s.get("tensorrt_plan") for s in manifest["stages"])
    if built or planned:
        lines += ["## TensorRT engines", "", *_engine_intro(manifest, built), ""]
        for stage in manifest["stages"]:
            if planned:
                stage = {**stage, "tensorrt_profiles": stage["tensorrt_plan"]}
            masks = tuple(n for n, t in (stage.get("input_types") or {}).items() if t == "bool")
            note = "" if stage_profiles(stage) else " (no tensorrt_profiles recorded: add --minShapes/... yourself)"
            commands = {
                "tensorrt": [trtexec_command(manifest, stage)],
                "tensorrt-rtx": [tensorrt_rtx_command(manifest, stage)],
                None: [trtexec_command(manifest, stage), tensorrt_rtx_command(manifest, stage)],
            }[built]
            # Polygraphy cannot turn TF32 off for TensorRT for RTX: no check line that would build otherwise
            if built != "tensorrt-rtx" or tf32(manifest):
                commands.append(polygraphy_command(manifest, stage, masks))
            lines += [f"Stage {stage['index']} (`{stage['file']}`){note}:", "", "```", *commands, "```", ""]
    loading = plugin_loading(manifest)
    if loading:
        lines += ["## Plugin library", "", *loading, ""]
    return lines


def _engine_intro(manifest: dict[str, Any], built: Any) -> list[str]:
    """What the engine commands below are for, and the TF32 choice they share with the build."""
    from .commands import tf32

    choice = (
        f"TF32 {'on' if tf32(manifest) else 'off'} (`--{'' if tf32(manifest) else 'no-'}tf32`), as the commands below"
    )
    if built == "tensorrt":
        return [f"Built with TensorRT, {choice}. Rebuild each engine, then check it against ONNX Runtime:"]
    if built == "tensorrt-rtx":
        sms = ", ".join(f"sm_{sm}" for sm in (manifest.get("tensorrt") or {}).get("target_sm") or [])
        lines = [
            f"Built ahead of time with TensorRT for RTX for {sms or 'its default targets'}, {choice}. Rebuild "
            "each engine with the SDK's `tensorrt_rtx` (the pip wheel has no CLI):"
        ]
        if not tf32(manifest):
            lines += [
                "",
                "Polygraphy builds TensorRT for RTX engines with TF32 on whatever its flags say, so check these "
                "engines with `tokcompile compare <this directory>` on the GPU rather than `polygraphy run`.",
            ]
        return lines
    return [
        f"Not built here ({choice}). On the GPU machine (TensorRT ≥ 10.7) build each stage's engine with "
        "`trtexec`, or on any machine with TensorRT for RTX's `tensorrt_rtx` (for Ampere and later), with the "
        "profiles `--backend tensorrt` would use, then check it against ONNX Runtime:"
    ]
