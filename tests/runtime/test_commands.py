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
from tokcompile.runtime.report import write_report


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


def fake_manifest(plugin_nodes: dict | None = None, library: str = "libtokcompile_plugins.so") -> dict:
    """Two stages as backends/tensorrt.py records them: {"bucket", "shapes": {name: [min, opt, max]}}."""
    plugin_nodes = {"AtsSample": 1} if plugin_nodes is None else plugin_nodes
    batch = (1, 16, 64)
    return {
        "format": "tokcompile-bundle",
        "model": {"name": "test_vit", "timm_name": "test_vit.r160_in1k", "input_shape": [3, 160, 160]},
        "weights": {"source": "file"},
        "method": {"name": "ats", "params": {}},
        "precision": "fp32",
        "backend": "tensorrt",
        "tf32": False,
        "lowering": {"plugins": "auto", "plugin_nodes": {"AtsSample": 1} if plugin_nodes else {}, "native_nodes": {}},
        "tokens": {"sequence": [101, 90.5], "blocks": []},
        "gmacs": {"reduced": 0.1, "dense": 0.2, "ideal_speedup": 2.0},
        "tensorrt": {
            "flavour": "tensorrt",
            "version": "10.13.0.35",
            "gpu": "NVIDIA H100",
            "compute_capability": "sm_90",
            "plugin_library": {"file": library, "sha256": "ab" * 32} if plugin_nodes else None,
        },
        "stages": [
            {
                "index": 0,
                "file": "stage0.onnx",
                "inputs": ["images"],
                "input_types": {"images": "float"},
                "onnxruntime_file": "stage0.onnx",
                "onnxruntime_precision": "fp32",
                "plugin_nodes": plugin_nodes,
                "tensorrt_file": "stage0.trt10.13-sm90.engine",
                "tensorrt_profiles": [
                    {"bucket": "fallback", "shapes": _shapes(batch, {"images": [3, 160, 160]}, None)}
                ],
            },
            {
                "index": 1,
                "file": "stage1.onnx",
                "inputs": ["gather_tokens", "valid_prefix", "sampled_ids"],
                "input_types": {"gather_tokens": "float", "valid_prefix": "bool", "sampled_ids": "int64"},
                "onnxruntime_file": "stage1.onnx",
                "onnxruntime_precision": "fp32",
                "plugin_nodes": {},
                "tensorrt_file": "stage1.trt10.13-sm90.engine",
                "tensorrt_profiles": [
                    {"bucket": 40, "shapes": _shapes(batch, STAGE1_DIMS, (40, 40, 40))},
                    {"bucket": "fallback", "shapes": _shapes(batch, STAGE1_DIMS, (1, 101, 101))},
                ],
            },
        ],
    }


def test_trtexec_command_exact() -> None:
    m = fake_manifest()
    assert trtexec_command(m, m["stages"][0]) == (
        "trtexec --onnx=stage0.onnx --saveEngine=stage0.trt10.13-sm90.engine --stronglyTyped --noTF32 "
        "--staticPlugins=./libtokcompile_plugins.so "
        "--profile=0 --minShapes=images:1x3x160x160 --optShapes=images:16x3x160x160 "
        "--maxShapes=images:64x3x160x160 --skipInference"
    )
    assert trtexec_command(m, m["stages"][1]) == (
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
    assert polygraphy_command(m, m["stages"][0]) == (
        "polygraphy run stage0.onnx --trt --onnxrt --strongly-typed --plugins ./libtokcompile_plugins.so "
        "--trt-min-shapes 'images:[1,3,160,160]' --trt-opt-shapes 'images:[16,3,160,160]' "
        "--trt-max-shapes 'images:[64,3,160,160]' --optimization-profile 0 "
        "--input-shapes 'images:[16,3,160,160]' --atol 0.0001"
    )
    assert polygraphy_command(m, m["stages"][1], ("valid_prefix",)) == (
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


def rtx_manifest(tf32: bool = False) -> dict:
    """The fake manifest as a TensorRT for RTX bundle built for sm_80 and sm_86."""
    m = fake_manifest(plugin_nodes={})
    m["backend"], m["tf32"] = "tensorrt-rtx", tf32
    m["tensorrt"] = {"flavour": "tensorrt-rtx", "version": "1.7.1.116", "target_sm": [80, 86], "plugin_library": None}
    for stage in m["stages"]:
        stage["tensorrt_file"] = stage["tensorrt_file"].replace("trt10.13-sm90", "rtx1.7-sm80_86")
    return m


def test_tensorrt_rtx_command_exact() -> None:
    m = rtx_manifest()
    assert tensorrt_rtx_command(m, m["stages"][0]) == (
        "tensorrt_rtx --onnx=stage0.onnx --saveEngine=stage0.rtx1.7-sm80_86.engine --computeCapabilities=80,86 "
        "--noTF32 --profile=0 --minShapes=images:1x3x160x160 --optShapes=images:16x3x160x160 "
        "--maxShapes=images:64x3x160x160 --skipInference"
    )
    # planned (ONNX Runtime bundle): the tool's default targets, its own engine name
    planned = fake_manifest(plugin_nodes={})
    del planned["tensorrt"]
    stage = {k: v for k, v in planned["stages"][0].items() if k != "tensorrt_file"}
    assert tensorrt_rtx_command(planned, stage).startswith(
        "tensorrt_rtx --onnx=stage0.onnx --saveEngine=stage0.rtx.plan --noTF32 --profile=0 "
    )


def test_tf32_choice_in_every_command() -> None:
    """trtexec and tensorrt_rtx enable TF32 unless --noTF32; Polygraphy disables it unless --tf32."""
    for tf32 in (False, True):
        m, rtx = fake_manifest(plugin_nodes={}), rtx_manifest(tf32)
        m["tf32"] = tf32
        stage = m["stages"][1]
        assert ("--noTF32" in shlex.split(trtexec_command(m, stage))) is not tf32
        assert ("--noTF32" in shlex.split(tensorrt_rtx_command(rtx, rtx["stages"][1]))) is not tf32
        assert ("--tf32" in shlex.split(polygraphy_command(m, stage))) is tf32
    # Polygraphy under TensorRT for RTX: the environment variable first
    assert polygraphy_command(rtx_manifest(True), rtx_manifest(True)["stages"][0]).startswith(
        "POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy run stage0.onnx --trt --onnxrt --strongly-typed --tf32 "
    )


def test_report_of_a_tensorrt_rtx_bundle(tmp_path: Path) -> None:
    for tf32 in (False, True):
        m = rtx_manifest(tf32)
        write_report(tmp_path / "report.md", m)
        text = (tmp_path / "report.md").read_text()
        assert "TensorRT for RTX for sm_80, sm_86" in text and "trtexec" not in text
        for stage in m["stages"]:
            assert tensorrt_rtx_command(m, stage) in text
        # Polygraphy cannot build a TF32-off TensorRT for RTX engine: no polygraphy line then
        assert ("POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy run stage0.onnx" in text) is tf32


def test_no_plugin_flags_without_plugin_nodes() -> None:
    m = fake_manifest(plugin_nodes={})
    assert "Plugins" not in trtexec_command(m, m["stages"][0])
    assert "--plugins" not in polygraphy_command(m, m["stages"][0])
    assert plugin_loading(m) == []


def test_dynamic_library_uses_dynamic_plugins() -> None:
    m = fake_manifest(library="libtokcompile_plugins_dynamic.so")
    assert "--dynamicPlugins=./libtokcompile_plugins_dynamic.so" in trtexec_command(m, m["stages"][0])
    # ctypes.CDLL registers nothing from a getCreators library: polygraphy gets the self-registering one
    assert "--plugins ./libtokcompile_plugins.so " in polygraphy_command(m, m["stages"][0])


def test_profiles_read_both_forms() -> None:
    triple = {"min": [1, 40], "opt": [16, 40], "max": [64, 40]}
    plain = {"tensorrt_profiles": [{"mask": triple, "bucket": 40}]}
    listed = {"tensorrt_profiles": [{"bucket": 40, "shapes": {"mask": [[1, 40], [16, 40], [64, 40]]}}]}
    assert stage_profiles(plain) == stage_profiles(listed) == [{"mask": ([1, 40], [16, 40], [64, 40])}]
    assert stage_profiles({}) == []


def test_plugin_library_from_the_tensorrt_block() -> None:
    assert plugin_library(fake_manifest(library="libx.so")) == "libx.so"
    assert plugin_library({"tensorrt": {"plugin_library": "build/liby.so"}}) == "liby.so"
    assert plugin_library({}) == "libtokcompile_plugins.so"


def test_report_of_a_tensorrt_bundle(tmp_path: Path) -> None:
    m = fake_manifest()
    write_report(tmp_path / "report.md", m)
    text = (tmp_path / "report.md").read_text()
    assert "## TensorRT engines" in text and "## Plugin library" in text and "## Lowering" in text
    for stage in m["stages"]:
        assert trtexec_command(m, stage) in text
    assert polygraphy_command(m, m["stages"][1], ("valid_prefix",)) in text
    assert "LD_PRELOAD=./libtokcompile_plugins.so tritonserver" in text
    assert "`--plugins auto`: TensorRT plugin nodes AtsSample×1; native (function body) none" in text


def test_report_of_an_onnx_bundle_with_plugin_nodes(bundle) -> None:
    """ATS (auto: AtsSample routed to the plugin) on ONNX Runtime: the planned engine commands (not
    built here) and how to load the library for TensorRT."""
    text = (bundle("test_vit", method="ats", buckets="40,60,80") / "report.md").read_text()
    assert "## TensorRT engines" in text and "Not built here" in text
    assert "## Plugin library" in text and "`build/libtokcompile_plugins.so` (built by the root CMakeLists.txt)" in text


def _polygraphy_help() -> str:
    exe = shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not installed")
    return subprocess.run([exe, "run", "--help"], capture_output=True, text=True, timeout=300, check=True).stdout


def test_every_polygraphy_flag_exists() -> None:
    help_flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", _polygraphy_help()))
    assert set(POLYGRAPHY_FLAGS) <= help_flags, set(POLYGRAPHY_FLAGS) - help_flags
    m = fake_manifest()
    emitted = {a for s in m["stages"] for a in shlex.split(polygraphy_command(m, s, ("valid_prefix",)))}
    assert {a for a in emitted if a.startswith("--")} <= set(POLYGRAPHY_FLAGS)
    trt = {a.split("=")[0] for s in m["stages"] for a in shlex.split(trtexec_command(m, s))}
    assert {a for a in trt if a.startswith("--")} <= set(TRTEXEC_FLAGS)
    m = rtx_manifest(tf32=True)
    emitted = {a for s in m["stages"] for a in shlex.split(polygraphy_command(m, s))}
    assert {a for a in emitted if a.startswith("--")} <= set(POLYGRAPHY_FLAGS) and "--tf32" in emitted
    rtx = {a.split("=")[0] for s in rtx_manifest()["stages"] for a in shlex.split(tensorrt_rtx_command(m, s))}
    assert {a for a in rtx if a.startswith("--")} <= set(TENSORRT_RTX_FLAGS)


def test_polygraphy_command_runs_onnxruntime_side(bundle) -> None:
    """The emitted command, minus the TensorRT runner and plugin (no TensorRT here), parses and
    runs ONNX Runtime on a real stage file at the profile's shapes with an all-valid mask."""
    exe = shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not installed")
    directory = bundle("test_vit", method="ats", buckets="40,60,80")
    manifest = tokcompile.load(directory).manifest
    stage = dict(manifest["stages"][1])
    assert stage["inputs"] == ["gather_tokens", "valid_prefix", "sampled_ids"]
    stage["tensorrt_profiles"] = fake_manifest()["stages"][1]["tensorrt_profiles"]
    masks = tuple(n for n, t in stage["input_types"].items() if t == "bool")
    args = shlex.split(polygraphy_command(manifest, stage, masks))
    i = args.index("--plugins")
    args = [a for a in args[:i] + args[i + 2 :] if a != "--trt"]
    result = subprocess.run([exe, *args[1:]], cwd=directory, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASSED" in result.stdout + result.stderr
