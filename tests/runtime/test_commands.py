"""report.md's commands (runtime/commands.py): exact strings for a fake TensorRT manifest, and
every Polygraphy flag checked against the installed ``polygraphy run``."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import tokcompile
from tokcompile.manifest import EnginesRecord, Manifest
from tokcompile.runtime.bundle import read_manifest
from tokcompile.runtime.commands import (
    POLYGRAPHY_FLAGS,
    TENSORRT_RTX_FLAGS,
    TRTEXEC_FLAGS,
    plugin_library,
    plugin_loading,
    polygraphy_command,
    stage_profiles,
    tensorrt_rtx_command,
    trtexec_command,
)
from tokcompile.runtime.report import engines_script, write_report


def _shapes(batch: tuple[int, int, int], dims: dict[str, list[int]], tokens: tuple[int, int, int] | None):
    out = {}
    for name, rest in dims.items():
        triple = []
        for i, b in enumerate(batch):
            shape = [b, *rest]
            if tokens is not None and len(shape) > 1:
                shape[1] = tokens[i]
            triple.append(shape)
        out[name] = triple
    return out


STAGE1_DIMS = {"gather_tokens": [0, 64], "valid_prefix": [0], "sampled_ids": [0]}


def fake_manifest(plugin_nodes: dict | None = None, library: str = "libtokcompile_plugins.so", **changes) -> Manifest:
    """Two stages with engines as backends/tensorrt records them: {"bucket", "shapes": {name: [min, opt, max]}}.

    ``changes``: top-level fields replaced in the JSON before it is read (e.g. ``tf32=True``).
    """
    plugin_nodes = {"AtsSample": 1} if plugin_nodes is None else plugin_nodes
    batch = (1, 16, 64)

    def stage(index: int, inputs: dict, engine: str, profiles: list, nodes: dict) -> dict:
        return {
            "index": index,
            "file": f"stage{index}.onnx",
            "inputs": list(inputs),
            "values_in": list(inputs),
            "outputs": [f"out{index}"],
            "input_types": inputs,
            "onnxruntime_file": f"stage{index}.onnx",
            "onnxruntime_precision": "fp32",
            "plugin_nodes": nodes,
            "engine": {"file": engine, "profiles": profiles, "plugin_layers": sum(nodes.values())},
        }

    data = {
        "format": "tokcompile-bundle",
        "format_version": 2,
        "fingerprint": "0" * 16,
        "created": "2026-12-01T00:00:00+00:00",
        "model": {
            "name": "test_vit",
            "timm_name": "test_vit.r160_in1k",
            "kwargs": {},
            "input_shape": [3, 160, 160],
            "num_classes": 1000,
            "depth": 6,
            "embed_dim": 64,
            "num_heads": 2,
            "num_prefix_tokens": 1,
            "patch_size": [16, 16],
            "grid": [10, 10],
        },
        "weights": {"source": "file", "digest": "d" * 64},
        "method": {"name": "ats", "params": {}},
        "precision": "fp32",
        "backend": "tensorrt",
        "tf32": False,
        "lowering": {"plugins": "auto", "plugin_nodes": dict(plugin_nodes), "native_nodes": {}},
        "tokens": {"sequence": [101, 90.5]},
        "gmacs": {"reduced": 0.1, "dense": 0.2, "ideal_speedup": 2.0},
        "tensorrt": {
            "flavour": "tensorrt",
            "version": "10.13.0.35",
            "max_batch": 64,
            "opt_batch": 16,
            "gpu": "NVIDIA H100",
            "compute_capability": "sm_90",
            **({"plugin_library": {"file": library, "sha256": "ab" * 32}} if plugin_nodes else {}),
        },
        "stages": [
            stage(
                0,
                {"images": "float"},
                "stage0.trt10.13-sm90.engine",
                [{"bucket": "fallback", "shapes": _shapes(batch, {"images": [3, 160, 160]}, None)}],
                plugin_nodes,
            ),
            stage(
                1,
                {"gather_tokens": "float", "valid_prefix": "bool", "sampled_ids": "int64"},
                "stage1.trt10.13-sm90.engine",
                [
                    {"bucket": 40, "shapes": _shapes(batch, STAGE1_DIMS, (40, 40, 40))},
                    {"bucket": "fallback", "shapes": _shapes(batch, STAGE1_DIMS, (1, 101, 101))},
                ],
                {},
            ),
        ],
        "final_outputs": {"logits": "out1"},
        "versions": {},
        **changes,
    }
    names = {f for s in data["stages"] for f in (s["file"], s["engine"]["file"])}
    names |= {library} if plugin_nodes and data.get("tensorrt") else set()
    data["files"] = {n: {"sha256": "ab" * 32, "bytes": 1} for n in sorted(names)}
    return Manifest.from_json(data, "fake")


def test_trtexec_command_exact() -> None:
    m = fake_manifest()
    assert trtexec_command(m, m.stages[0]) == (
        "trtexec --onnx=stage0.onnx --saveEngine=stage0.trt10.13-sm90.engine --stronglyTyped --noTF32 "
        "--staticPlugins=./libtokcompile_plugins.so "
        "--profile=0 --minShapes=images:1x3x160x160 --optShapes=images:16x3x160x160 "
        "--maxShapes=images:64x3x160x160 --skipInference"
    )
    assert trtexec_command(m, m.stages[1]) == (
        "trtexec --onnx=stage1.onnx --saveEngine=stage1.trt10.13-sm90.engine --stronglyTyped --noTF32 "
        "--profile=0 --minShapes=gather_tokens:1x40x64,valid_prefix:1x40,sampled_ids:1x40 "
        "--optShapes=gather_tokens:16x40x64,valid_prefix:16x40,sampled_ids:16x40 "
        "--maxShapes=gather_tokens:64x40x64,valid_prefix:64x40,sampled_ids:64x40 "
        "--profile=1 --minShapes=gather_tokens:1x1x64,valid_prefix:1x1,sampled_ids:1x1 "
        "--optShapes=gather_tokens:16x101x64,valid_prefix:16x101,sampled_ids:16x101 "
        "--maxShapes=gather_tokens:64x101x64,valid_prefix:64x101,sampled_ids:64x101 --skipInference"
    )


def test_polygraphy_command_exact() -> None:
    m = fake_manifest()
    assert polygraphy_command(m, m.stages[0]) == (
        "polygraphy run stage0.onnx --trt --onnxrt --strongly-typed --plugins ./libtokcompile_plugins.so "
        "--trt-min-shapes 'images:[1,3,160,160]' --trt-opt-shapes 'images:[16,3,160,160]' "
        "--trt-max-shapes 'images:[64,3,160,160]' --optimization-profile 0 "
        "--input-shapes 'images:[16,3,160,160]' --atol 0.0001"
    )
    assert polygraphy_command(m, m.stages[1]) == (
        "polygraphy run stage1.onnx --trt --onnxrt --strongly-typed "
        "--trt-min-shapes 'gather_tokens:[1,40,64]' 'valid_prefix:[1,40]' 'sampled_ids:[1,40]' "
        "--trt-opt-shapes 'gather_tokens:[16,40,64]' 'valid_prefix:[16,40]' 'sampled_ids:[16,40]' "
        "--trt-max-shapes 'gather_tokens:[64,40,64]' 'valid_prefix:[64,40]' 'sampled_ids:[64,40]' "
        "--trt-min-shapes 'gather_tokens:[1,1,64]' 'valid_prefix:[1,1]' 'sampled_ids:[1,1]' "
        "--trt-opt-shapes 'gather_tokens:[16,101,64]' 'valid_prefix:[16,101]' 'sampled_ids:[16,101]' "
        "--trt-max-shapes 'gather_tokens:[64,101,64]' 'valid_prefix:[64,101]' 'sampled_ids:[64,101]' "
        "--optimization-profile 1 "
        "--input-shapes 'gather_tokens:[16,101,64]' 'valid_prefix:[16,101]' 'sampled_ids:[16,101]' "
        "--val-range 'valid_prefix:[1,1]' --atol 0.0001"
    )


def rtx_manifest(tf32: bool = False) -> Manifest:
    """The fake manifest as a TensorRT for RTX bundle built for sm_80 and sm_86."""
    m = fake_manifest(plugin_nodes={}, backend="tensorrt-rtx", tf32=tf32)
    m.tensorrt = EnginesRecord("tensorrt-rtx", "1.7.1.116", 64, 16, target_sm=[80, 86])
    for stage in m.stages:
        stage.engine.file = stage.engine.file.replace("trt10.13-sm90", "rtx1.7-sm80_86")
    return m


def test_tensorrt_rtx_command_exact() -> None:
    m = rtx_manifest()
    assert tensorrt_rtx_command(m, m.stages[0]) == (
        "tensorrt_rtx --onnx=stage0.onnx --saveEngine=stage0.rtx1.7-sm80_86.engine --computeCapabilities=80,86 "
        "--noTF32 --profile=0 --minShapes=images:1x3x160x160 --optShapes=images:16x3x160x160 "
        "--maxShapes=images:64x3x160x160 --skipInference"
    )
    # planned (ONNX Runtime bundle): the tool's default targets, its own engine name
    planned = fake_manifest(plugin_nodes={}, backend="onnxruntime", tensorrt=None)
    stage = planned.stages[0]
    stage.tensorrt_plan, stage.engine = stage.engine.profiles, None
    assert tensorrt_rtx_command(planned, stage).startswith(
        "tensorrt_rtx --onnx=stage0.onnx --saveEngine=stage0.rtx.plan --noTF32 --profile=0 "
    )


def test_tf32_choice_in_every_command() -> None:
    """trtexec and tensorrt_rtx enable TF32 unless --noTF32; Polygraphy disables it unless --tf32."""
    for tf32 in (False, True):
        m, rtx = fake_manifest(plugin_nodes={}, tf32=tf32), rtx_manifest(tf32)
        stage = m.stages[1]
        assert ("--noTF32" in shlex.split(trtexec_command(m, stage))) is not tf32
        assert ("--noTF32" in shlex.split(tensorrt_rtx_command(rtx, rtx.stages[1]))) is not tf32
        assert ("--tf32" in shlex.split(polygraphy_command(m, stage))) is tf32
    # Polygraphy under TensorRT for RTX: the environment variable first
    assert polygraphy_command(rtx_manifest(True), rtx_manifest(True).stages[0]).startswith(
        "POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy run stage0.onnx --trt --onnxrt --strongly-typed --tf32 "
    )


def test_report_of_a_tensorrt_rtx_bundle(tmp_path: Path) -> None:
    for tf32 in (False, True):
        m = rtx_manifest(tf32)
        write_report(tmp_path / "report.md", m)
        text, script = (tmp_path / "report.md").read_text(), engines_script(m)
        assert "TensorRT for RTX for sm_80, sm_86" in text and "trtexec" not in text + script
        assert "`engines.sh` holds the command lines, one per stage (2 stage(s), 3 optimization profile(s)" in text
        for stage in m.stages:
            assert tensorrt_rtx_command(m, stage) in script.splitlines()
        # Polygraphy cannot build a TF32-off TensorRT for RTX engine: no polygraphy line then
        assert ("POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy run stage0.onnx" in script) is tf32


def test_no_plugin_flags_without_plugin_nodes() -> None:
    m = fake_manifest(plugin_nodes={})
    assert "Plugins" not in trtexec_command(m, m.stages[0])
    assert "--plugins" not in polygraphy_command(m, m.stages[0])
    assert plugin_loading(m) == []


def test_dynamic_library_uses_dynamic_plugins() -> None:
    m = fake_manifest(library="libtokcompile_plugins_dynamic.so")
    assert "--dynamicPlugins=./libtokcompile_plugins_dynamic.so" in trtexec_command(m, m.stages[0])
    # ctypes.CDLL registers nothing from a getCreators library: polygraphy gets the self-registering one
    assert "--plugins ./libtokcompile_plugins.so " in polygraphy_command(m, m.stages[0])


def test_profiles_as_built_else_as_planned() -> None:
    m = fake_manifest()
    stage = m.stages[1]
    assert stage_profiles(stage) == stage.engine.profiles and len(stage_profiles(stage)) == 2
    stage.tensorrt_plan, stage.engine = stage.engine.profiles[:1], None
    assert stage_profiles(stage) == stage.tensorrt_plan


def test_plugin_library_from_the_tensorrt_block() -> None:
    assert plugin_library(fake_manifest(library="libx.so")) == "libx.so"
    assert plugin_library(fake_manifest(plugin_nodes={})) == "libtokcompile_plugins.so"


def test_report_of_a_tensorrt_bundle(tmp_path: Path) -> None:
    m = fake_manifest()
    write_report(tmp_path / "report.md", m)
    text, script = (tmp_path / "report.md").read_text(), engines_script(m).splitlines()
    assert "## TensorRT engines" in text and "## Plugin library" in text and "## Lowering" in text
    for stage in m.stages:
        assert trtexec_command(m, stage) in script
    assert f"# check: {polygraphy_command(m, m.stages[1])}" in script
    assert "LD_PRELOAD=./libtokcompile_plugins.so tritonserver" in text
    assert "`--plugins auto`: TensorRT plugin nodes AtsSample×1; native (function body) none" in text


def test_report_of_an_onnx_bundle_with_plugin_nodes(bundle) -> None:
    """EViT with ``--plugins on`` (EvitSelect routed to the plugin) on ONNX Runtime: the manifest's
    lowering record, the planned engine commands (not built here) and how to load the library for
    TensorRT."""
    directory = bundle("test_vit", method="evit", plugins="on")
    lowering = read_manifest(directory).lowering
    assert (lowering.plugins, lowering.plugin_nodes, lowering.native_nodes) == ("on", {"EvitSelect": 3}, {})
    text = (directory / "report.md").read_text()
    assert "## TensorRT engines" in text and "Not built here" in text
    assert "## Plugin library" in text and "`build/libtokcompile_plugins.so` (built by the root CMakeLists.txt)" in text
    script = (directory / "engines.sh").read_text()
    assert script.startswith("#!/bin/sh") and "--staticPlugins=./libtokcompile_plugins.so" in script


def _polygraphy_help() -> str:
    exe = shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not installed")
    return subprocess.run([exe, "run", "--help"], capture_output=True, text=True, timeout=300, check=True).stdout


def test_every_polygraphy_flag_exists() -> None:
    help_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", _polygraphy_help()))
    assert set(POLYGRAPHY_FLAGS) <= help_flags, set(POLYGRAPHY_FLAGS) - help_flags
    m = fake_manifest()
    emitted = {a for s in m.stages for a in shlex.split(polygraphy_command(m, s))}
    assert {a for a in emitted if a.startswith("--")} <= set(POLYGRAPHY_FLAGS)
    trt = {a.split("=")[0] for s in m.stages for a in shlex.split(trtexec_command(m, s))}
    assert {a for a in trt if a.startswith("--")} <= set(TRTEXEC_FLAGS)
    m = rtx_manifest(tf32=True)
    emitted = {a for s in m.stages for a in shlex.split(polygraphy_command(m, s))}
    assert {a for a in emitted if a.startswith("--")} <= set(POLYGRAPHY_FLAGS) and "--tf32" in emitted
    rtx = {a.split("=")[0] for s in rtx_manifest().stages for a in shlex.split(tensorrt_rtx_command(m, s))}
    assert {a for a in rtx if a.startswith("--")} <= set(TENSORRT_RTX_FLAGS)


def test_polygraphy_command_runs_onnxruntime_side(method_bundle) -> None:
    """The emitted command, minus the TensorRT runner and plugin (no TensorRT here), parses and
    runs ONNX Runtime on a real stage file at the profile's shapes with an all-valid mask."""
    exe = shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not installed")
    directory = method_bundle("ats")
    manifest = tokcompile.load(directory).manifest
    stage = manifest.stages[1]
    assert stage.inputs == ["gather_tokens", "valid_prefix", "sampled_ids"]
    stage.tensorrt_plan = fake_manifest().stages[1].engine.profiles
    args = [a for a in shlex.split(polygraphy_command(manifest, stage)) if a != "--trt"]
    result = subprocess.run([exe, *args[1:]], cwd=directory, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASSED" in result.stdout + result.stderr
