"""``report.md`` (the human-readable summary of every bundle) and ``engines.sh`` (the command
lines that build its TensorRT engines with exactly the planned profiles)."""

from __future__ import annotations

from pathlib import Path

from ..manifest import Manifest
from .commands import (
    flavour,
    plugin_loading,
    polygraphy_command,
    stage_profiles,
    tensorrt_rtx_command,
    tf32,
    trtexec_command,
)

REPORT_FILE = "report.md"
ENGINES_FILE = "engines.sh"


def token_table(manifest: Manifest) -> list[str]:
    tokens = manifest.tokens
    if tokens.staged:  # per-image counts, from calibration
        cal = tokens.calibration or {}
        rows = [
            f"Per-image token counts on {cal.get('images', '?')} calibration images ({cal.get('source', '?')}):",
            "",
            "| after stage | count output | mean | min | max | buckets |",
            "|---|---|---|---|---|---|",
        ]
        for b in tokens.boundaries:
            rows.append(f"| {b.stage} | {b.output} | {b.mean} | {b.min} | {b.max} | {b.buckets} |")
        return rows
    rows = ["| block | attention tokens | MLP tokens |", "|---|---|---|"]
    for block in tokens.blocks:
        mark = " ←" if block.mlp != block.attention else ""
        rows.append(f"| {block.block} | {block.attention} | {block.mlp}{mark} |")
    return rows


def format_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def write_report(path: Path, manifest: Manifest) -> None:
    """``report.md`` from the manifest; ``manifest.files`` holds every file but the report."""
    model, method, g, weights = manifest.model, manifest.method, manifest.gmacs, manifest.weights
    stages = manifest.stages
    params = ", ".join(f"{k}={v}" for k, v in method.params.items()) or "-"
    ort_files = sorted({s.onnxruntime_file for s in stages})
    versions = ", ".join(f"{k} {v}" for k, v in manifest.versions.items())
    calibration = manifest.tokens.calibration or {}
    lines = [
        f"# {model.name} · {method.name} · {manifest.precision}",
        "",
        f"- model: `{model.timm_name}`, input {model.input_shape}"
        + (f", model arguments {model.kwargs}" if model.kwargs else ""),
        f"- weights: {weights.source}"
        + (" (RANDOM: accuracy is meaningless)" if weights.source == "random" else "")
        + (f", `{weights.path}`" if weights.path else ""),
        f"- method: `{method.name}` ({params})",
        *(f"- WARNING: {w}" for w in method.warnings),
        f"- tokens: {' → '.join(map(str, manifest.tokens.sequence))}",
        *(f"- WARNING: {w}" for w in manifest.tokens.warnings),
        f"- GMACs: {g.reduced:.3f} reduced vs {g.dense:.3f} dense; ideal speed-up {g.ideal_speedup:.3f}×",
        *(
            [
                f"- buckets: chosen for profile `{calibration['profile']}` from {calibration.get('images')} "
                f"calibration images ({calibration.get('source')})"
            ]
            if calibration.get("profile")
            else []
        ),
        f"- backend: {manifest.backend}; {len(stages)} stage file(s); ONNX Runtime runs "
        f"{', '.join(f'`{f}`' for f in ort_files[:3])}{', ...' if len(ort_files) > 3 else ''} "
        f"({stages[0].onnxruntime_precision})",
        f"- built {manifest.created} in {manifest.build_seconds} s with {versions}",
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
        *(f"polygraphy inspect model {s.file}" for s in stages),
        "```",
        "",
        "## Files",
        "",
        "| file | size | sha256 |",
        "|---|---|---|",
        *(f"| `{name}` | {format_size(e.bytes)} | `{e.sha256[:16]}…` |" for name, e in manifest.files.items()),
        "",
        *deployment_section(manifest),
    ]
    path.write_text("\n".join(lines))


def has_engine_commands(manifest: Manifest) -> bool:
    """Whether the bundle gets ``engines.sh``: built engines, or a plan for every stage."""
    return flavour(manifest) is not None or all(s.tensorrt_plan for s in manifest.stages)


def deployment_section(manifest: Manifest) -> list[str]:
    """Lowering, what ``engines.sh`` holds, and plugin loading."""
    lowering = manifest.lowering
    plugin = ", ".join(f"{k}×{v}" for k, v in lowering.plugin_nodes.items()) or "none"
    native = ", ".join(f"{k}×{v}" for k, v in lowering.native_nodes.items()) or "none"
    lines = [
        "## Lowering",
        "",
        f"- `--plugins {lowering.requested or lowering.plugins}`"
        + (f" (exported as `{lowering.plugins}` for this backend)" if lowering.requested else "")
        + f": TensorRT plugin nodes {plugin}; native (function body) {native}",
        "",
    ]
    if has_engine_commands(manifest):
        profiles = sum(len(stage_profiles(s)) for s in manifest.stages)
        lines += [
            "## TensorRT engines",
            "",
            *_engine_intro(manifest, flavour(manifest)),
            "",
            f"`{ENGINES_FILE}` holds the command lines, one per stage ({len(manifest.stages)} stage(s), {profiles} "
            "optimization profile(s) in all); run it from this directory.",
            "",
        ]
    loading = plugin_loading(manifest)
    if loading:
        lines += ["## Plugin library", "", *loading, ""]
    return lines


def engines_script(manifest: Manifest) -> str:
    """``engines.sh``: per stage, the engine build command(s) and the Polygraphy check."""
    built = flavour(manifest)
    lines = [
        "#!/bin/sh",
        f"# TensorRT engine commands for {manifest.model.name} · {manifest.method.name} · {manifest.precision}",
        "# (written by tokcompile build; see report.md). Run from the bundle directory.",
        "set -e",
        "",
    ]
    for stage in manifest.stages:
        note = "" if stage_profiles(stage) else " (no profiles recorded: add --minShapes/... yourself)"
        commands = {
            "tensorrt": [trtexec_command(manifest, stage)],
            "tensorrt-rtx": [tensorrt_rtx_command(manifest, stage)],
            None: [trtexec_command(manifest, stage), tensorrt_rtx_command(manifest, stage)],
        }[built]
        if built is None:  # either tool: the second is an alternative, not a second step
            commands[1] = f"# or, with TensorRT for RTX: {commands[1]}"
        # Polygraphy cannot turn TF32 off for TensorRT for RTX: no check line that would build otherwise
        if built != "tensorrt-rtx" or tf32(manifest):
            commands.append(f"# check: {polygraphy_command(manifest, stage)}")
        lines += [f"# stage {stage.index}: {stage.file}{note}", *commands, ""]
    return "\n".join(lines)


def _engine_intro(manifest: Manifest, built: object) -> list[str]:
    """What the engine commands are for, and the TF32 choice they share with the build."""
    choice = f"TF32 {'on' if tf32(manifest) else 'off'} (`--{'' if tf32(manifest) else 'no-'}tf32`), as its commands"
    if built == "tensorrt":
        return [
            f"Built with TensorRT, {choice}. `{ENGINES_FILE}` rebuilds each engine and checks it against ONNX Runtime."
        ]
    if built == "tensorrt-rtx":
        target = manifest.tensorrt.target_sm if manifest.tensorrt is not None else None
        sms = ", ".join(f"sm_{sm}" for sm in target or [])
        lines = [
            f"Built ahead of time with TensorRT for RTX for {sms or 'its default targets'}, {choice}. "
            f"`{ENGINES_FILE}` rebuilds each engine with the SDK's `tensorrt_rtx` (the pip wheel has no CLI)."
        ]
        if not tf32(manifest):
            lines += [
                "",
                "Polygraphy builds TensorRT for RTX engines with TF32 on whatever its flags say, so check these "
                "engines with `tokcompile compare <this directory>` on the GPU rather than `polygraphy run`.",
            ]
        return lines
    return [
        f"Not built here ({choice}). On the GPU machine (TensorRT ≥ 10.7) `{ENGINES_FILE}` builds each stage's "
        "engine with `trtexec`, or on any machine with TensorRT for RTX's `tensorrt_rtx` (for Ampere and later), "
        "with the profiles `--backend tensorrt` would use, and checks it against ONNX Runtime."
    ]
