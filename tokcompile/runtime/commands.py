"""Shell commands a bundle's ``report.md`` prints: rebuild a stage's engine (trtexec for
TensorRT, tensorrt_rtx for TensorRT for RTX), check it against ONNX Runtime (polygraphy run),
load the plugin library.

Pure functions of the manifest (no file access), so tests pin the exact strings. Every command
runs from the bundle directory and makes the same TF32 choice as the build (``manifest.tf32``).
Flag spellings:

- trtexec (NVIDIA/TensorRT ``samples/common/sampleOptions.cpp``): ``--onnx=``, ``--saveEngine=``,
  ``--stronglyTyped`` (needed on 10.x; a no-op kept for compatibility on 11), ``--noTF32``
  (trtexec enables TF32 unless given it), ``--staticPlugins=`` (a library that registers its
  creators when loaded) or ``--dynamicPlugins=`` (one exporting ``getCreators``),
  ``--skipInference``, and one block per optimization profile
  ``--profile=i --minShapes=spec --optShapes=spec --maxShapes=spec`` with
  ``spec ::= name:DxDxD[,name:DxD]``.
- tensorrt_rtx (TensorRT for RTX's trtexec, shipped in its SDK zip/tarball, not in the pip
  wheel): the TensorRT for RTX docs show ``--onnx=``, ``--saveEngine=``, ``--minShapes/--optShapes/
  --maxShapes=``, ``--skipInference`` and ``--computeCapabilities=75,80,...``; ``--profile=`` and
  ``--noTF32`` are trtexec's option parser, which the tool shares (its networks are always
  strongly typed, so no ``--stronglyTyped``; TF32 is on by default as in the builder).
- polygraphy run (``polygraphy/tools/args``): ``--trt --onnxrt``, ``--strongly-typed``,
  ``--tf32`` (Polygraphy leaves TF32 off unless given it), ``--plugins PATH`` (loaded with
  ``ctypes.CDLL``: the self-registering library), one
  ``--trt-min-shapes/--trt-opt-shapes/--trt-max-shapes name:[D,D] ...`` group per profile,
  ``--optimization-profile``, ``--input-shapes``, ``--val-range``, ``--atol``. With
  ``POLYGRAPHY_USE_TENSORRT_RTX=1`` it builds with TensorRT for RTX but ignores ``--tf32`` and
  keeps TensorRT for RTX's default (TF32 on) (``polygraphy/tools/args/backend/trt/config.py``:
  ``CreateConfigRTX`` gets no ``tf32``), so it matches a TensorRT for RTX build only with TF32 on.

``dlopen`` (and so ``ctypes.CDLL``, trtexec and ``LD_PRELOAD``) does not search the working
directory for a bare file name: library paths are written ``./<name>``.
"""

from __future__ import annotations

import shlex
from pathlib import PurePath
from typing import Optional

from .. import _defaults
from ..manifest import Manifest, Profile, StageEntry

Shape = list[int]

# Every flag the functions below can emit (tests check them against `polygraphy run --help`).
POLYGRAPHY_FLAGS = (
    "--trt",
    "--onnxrt",
    "--strongly-typed",
    "--plugins",
    "--trt-min-shapes",
    "--trt-opt-shapes",
    "--trt-max-shapes",
    "--tf32",
    "--optimization-profile",
    "--input-shapes",
    "--val-range",
    "--atol",
)
TRTEXEC_FLAGS = (
    "--onnx",
    "--saveEngine",
    "--stronglyTyped",
    "--noTF32",
    "--staticPlugins",
    "--dynamicPlugins",
    "--skipInference",
    "--profile",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
)
TENSORRT_RTX_FLAGS = (
    "--onnx",
    "--saveEngine",
    "--computeCapabilities",
    "--noTF32",
    "--profile",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--skipInference",
)
# The environment variable that makes Polygraphy build with TensorRT for RTX (polygraphy/config.py).
POLYGRAPHY_RTX_ENV = "POLYGRAPHY_USE_TENSORRT_RTX=1"


def stage_profiles(stage: StageEntry) -> list[Profile]:
    """The optimization profiles of a stage's engine: as built, else as planned (``tensorrt_plan``)."""
    return stage.engine.profiles if stage.engine is not None else stage.tensorrt_plan


def _ordered(profile: Profile, stage: StageEntry) -> list[str]:
    """Input names in the stage's input order, then any others the profile names."""
    shapes = profile["shapes"]
    names = [n for n in stage.inputs if n in shapes]
    return names + [n for n in shapes if n not in names]


def _bundled_library(manifest: Manifest) -> Optional[str]:
    """File name of the plugin library the ``tensorrt`` record holds, if any."""
    lib = manifest.tensorrt.plugin_library if manifest.tensorrt is not None else None
    return PurePath(lib["file"]).name if lib and lib.get("file") else None


def plugin_library(manifest: Manifest) -> str:
    """File name of the bundle's plugin library, else the default (self-registering) build."""
    return _bundled_library(manifest) or _defaults.PLUGIN_LIBRARY


def _is_dynamic_library(name: str) -> bool:
    # plugins/ builds libtokcompile_plugins.so (self-registering) and ..._dynamic.so (getCreators).
    return name.endswith("_dynamic.so")


def uses_plugins(manifest: Manifest) -> bool:
    return any(s.plugin_nodes for s in manifest.stages)


def flavour(manifest: Manifest) -> Optional[str]:
    """The TensorRT flavour that built the bundle's engines (tensorrt | tensorrt-rtx); None without."""
    return manifest.tensorrt.flavour if manifest.tensorrt is not None else None


def tf32(manifest: Manifest) -> bool:
    """The build's TF32 choice. Bundles from before the choice was recorded were built with TF32
    off (Polygraphy's CreateConfig default)."""
    return bool(manifest.tf32)


def engine_file(stage: StageEntry, suffix: str = ".plan") -> str:
    return stage.engine.file if stage.engine is not None else f"{PurePath(stage.file).stem}{suffix}"


def _join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _profile_flags(stage: StageEntry) -> list[str]:
    """trtexec-style ``--profile=i --minShapes=... --optShapes=... --maxShapes=...`` per profile."""
    args = []
    for i, profile in enumerate(stage_profiles(stage)):
        names = _ordered(profile, stage)
        args.append(f"--profile={i}")
        for j, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            spec = ",".join(f"{n}:{'x'.join(map(str, profile['shapes'][n][j]))}" for n in names)
            args.append(f"{flag}={spec}")
    return args


def trtexec_command(manifest: Manifest, stage: StageEntry) -> str:
    """``trtexec`` that rebuilds the stage's engine with one ``--profile`` block per bucket."""
    args = ["trtexec", f"--onnx={stage.file}", f"--saveEngine={engine_file(stage)}", "--stronglyTyped"]
    if not tf32(manifest):
        args.append("--noTF32")
    if stage.plugin_nodes:
        lib = plugin_library(manifest)
        flag = "--dynamicPlugins" if _is_dynamic_library(lib) else "--staticPlugins"
        args.append(f"{flag}=./{lib}")
    return _join([*args, *_profile_flags(stage), "--skipInference"])


def tensorrt_rtx_command(manifest: Manifest, stage: StageEntry) -> str:
    """``tensorrt_rtx`` that rebuilds the stage's TensorRT for RTX engine ahead of time, for the SMs
    the bundle records (none recorded: the tool's default targets, Ampere and later)."""
    args = ["tensorrt_rtx", f"--onnx={stage.file}", f"--saveEngine={engine_file(stage, '.rtx.plan')}"]
    target = (
        manifest.tensorrt.target_sm if manifest.tensorrt is not None and flavour(manifest) == "tensorrt-rtx" else None
    )
    if target:
        args.append(f"--computeCapabilities={','.join(map(str, target))}")
    if not tf32(manifest):
        args.append("--noTF32")
    return _join([*args, *_profile_flags(stage), "--skipInference"])


def _bracket(shape: Shape) -> str:
    return f"[{','.join(map(str, shape))}]"


def polygraphy_command(manifest: Manifest, stage: StageEntry) -> str:
    """``polygraphy run`` that builds the stage with TensorRT and compares it with ONNX Runtime.

    Inference runs at the opt shapes of the last profile (the largest bucket). Boolean inputs
    (token masks) are generated all-True, a valid mask; other inputs get Polygraphy's random data.
    """
    profiles = stage_profiles(stage)
    args = ["polygraphy", "run", stage.file, "--trt", "--onnxrt", "--strongly-typed"]
    if flavour(manifest) == "tensorrt-rtx":
        args.insert(0, POLYGRAPHY_RTX_ENV)
    if tf32(manifest):
        args.append("--tf32")
    if stage.plugin_nodes:
        lib = plugin_library(manifest)  # ctypes.CDLL registers nothing from a getCreators library
        args += ["--plugins", f"./{_defaults.PLUGIN_LIBRARY if _is_dynamic_library(lib) else lib}"]
    for profile in profiles:
        names = _ordered(profile, stage)
        for j, flag in enumerate(("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes")):
            args += [flag, *(f"{n}:{_bracket(profile['shapes'][n][j])}" for n in names)]
    if profiles:
        last = profiles[-1]
        args += ["--optimization-profile", str(len(profiles) - 1)]
        args += ["--input-shapes", *(f"{n}:{_bracket(last['shapes'][n][1])}" for n in _ordered(last, stage))]
    masks = [n for n in stage.inputs if stage.input_types.get(n) == "bool"]
    if masks:
        args += ["--val-range", *(f"{n}:[1,1]" for n in masks)]
    atol = _defaults.COMPARE_ATOL.get(manifest.precision)
    if atol is not None:
        args += ["--atol", str(atol)]
    return _join(args)


def plugin_loading(manifest: Manifest) -> list[str]:
    """Markdown lines: how each consumer loads the plugin library (empty without plugin nodes)."""
    if not uses_plugins(manifest):
        return []
    lib = plugin_library(manifest)
    nodes = ", ".join(f"{k}×{v}" for k, v in manifest.lowering.plugin_nodes.items())
    in_bundle = _bundled_library(manifest) is not None or lib in manifest.files
    where = f"`./{lib}` (in this bundle)" if in_bundle else f"`build/{lib}` (built by the root CMakeLists.txt)"
    lines = [
        f"Plugin nodes ({nodes or 'see manifest'}) run as TensorRT plugins in namespace "
        f"`{_defaults.PLUGIN_NAMESPACE}`; TensorRT needs the plugin library {where} loaded before it "
        "parses an ONNX file or deserializes an engine. ONNX Runtime needs nothing (it runs the nodes' "
        "ONNX function bodies).",
        "",
    ]
    if _is_dynamic_library(lib):
        static = _defaults.PLUGIN_LIBRARY
        return lines + [
            f"- trtexec: `--dynamicPlugins=./{lib}`",
            f"- polygraphy, Python (`ctypes.CDLL`) and Triton load the self-registering build `{static}` "
            f"(`build/{static}`), not this getCreators library",
        ]
    return lines + [
        f"- trtexec: `--staticPlugins=./{lib}`",
        f"- polygraphy: `--plugins ./{lib}`",
        f"- Python: `import tensorrt`, then `ctypes.CDLL('./{lib}', mode=ctypes.RTLD_GLOBAL)` before parsing or "
        "deserializing (`tokcompile.load` does this for TensorRT bundles)",
        f"- Triton: `LD_PRELOAD=./{lib} tritonserver ...` or `--backend-config=tensorrt,plugins=./{lib}`",
    ]
