"""Configure and build the repository's CMake project (plugins/) for the tests in this folder.

One CMake build directory per test session (``conftest.py``): every test builds the targets it
needs in it, and ninja compiles the shared kernel objects only once.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ARCHS = "80;86;89;90"
KERNELS_LIB = "libtokcompile_kernels.so"
STATIC_PLUGINS_LIB = "libtokcompile_plugins.so"
DYNAMIC_PLUGINS_LIB = "libtokcompile_plugins_dynamic.so"
GLUE_CHECK = "tokcompile_plugin_glue_check"
LAUNCHERS = ("tokcompileAtsSample", "tokcompileEvitSelect", "tokcompileKernelErrorString")
# Standard include directories a distribution package puts NvInfer.h in.
SYSTEM_INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu"), Path("/usr/local/include"))


def missing_tools() -> str | None:
    """Why the project cannot be built here, or None when cmake, ninja and nvcc are found."""
    for tool in ("cmake", "ninja", "nvcc"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (needed to build plugins/ with CMake + Ninja + nvcc)"
    return None


def find_tensorrt() -> tuple[Path | None, Path | None, str]:
    """(TensorRT_ROOT to pass to CMake, include dir holding NvInfer.h, how it was found).

    Looks at $TensorRT_ROOT/include first, then the standard include path, as CMakeLists.txt does
    (CMake finds the latter by itself, so no TensorRT_ROOT is passed then). Both None: not found.
    """
    root = os.environ.get("TensorRT_ROOT")
    if root:
        include = Path(root) / "include"
        if (include / "NvInfer.h").is_file():
            return Path(root), include, f"TensorRT_ROOT={root}"
        return None, None, f"TensorRT_ROOT={root} has no include/NvInfer.h"
    for include in SYSTEM_INCLUDE_DIRS:
        if (include / "NvInfer.h").is_file():
            return None, include, f"NvInfer.h in {include}"
    return None, None, "no TensorRT headers: TensorRT_ROOT is unset and no NvInfer.h on the standard include path"


def tensorrt_version(include: Path) -> str:
    """'10.7.0' from NvInferVersion.h (10.x defines NV_TENSORRT_*, 11.x TRT_*_ENTERPRISE)."""
    header = include / "NvInferVersion.h"
    if not header.is_file():
        return "unknown"
    defines = {}
    for line in header.read_text().splitlines():
        tokens = line.split()
        if len(tokens) >= 3 and tokens[0] == "#define" and tokens[2].isdigit():
            defines[tokens[1]] = tokens[2]
    parts = [
        defines.get(f"TRT_{p}_ENTERPRISE") or defines.get(f"NV_TENSORRT_{p}") or "?"
        for p in ("MAJOR", "MINOR", "PATCH")
    ]
    return ".".join(parts)


@dataclass
class CMakeBuild:
    """A configured build directory; ``build(target)`` compiles one target (incrementally)."""

    directory: Path
    tensorrt_include: Path | None
    configure_log: str
    seconds: dict[str, float] = field(default_factory=dict)

    def build(self, target: str) -> str:
        start = time.perf_counter()
        result = subprocess.run(
            ["cmake", "--build", str(self.directory), "--target", target],
            capture_output=True,
            text=True,
            check=False,
        )
        self.seconds[target] = time.perf_counter() - start
        if result.returncode != 0:
            raise AssertionError(f"building {target} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
        return result.stdout

    def path(self, name: str) -> Path:
        return self.directory / name


def configure(directory: Path, archs: str = DEFAULT_ARCHS) -> CMakeBuild:
    """cmake -G Ninja for ``archs``; with the TensorRT headers (and the glue check) when found."""
    root, include, _ = find_tensorrt()
    command = [
        "cmake",
        "-S",
        str(REPO),
        "-B",
        str(directory),
        "-G",
        "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
    ]
    if root is not None:
        command.append(f"-DTensorRT_ROOT={root}")
    if include is not None:
        command.append("-DTOKCOMPILE_BUILD_GLUE_CHECK=ON")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"cmake configure failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return CMakeBuild(directory=directory, tensorrt_include=include, configure_log=result.stdout)


def bind_kernels(path: Path | str) -> ctypes.CDLL:
    """ctypes binding of libtokcompile_kernels.so's extern "C" launchers
    (plugins/common/tokcompileKernelApi.h)."""
    lib = ctypes.CDLL(str(path))
    lib.tokcompileEvitSelect.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int32] * 8 + [ctypes.c_void_p]
    lib.tokcompileEvitSelect.restype = ctypes.c_int
    lib.tokcompileAtsSample.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32] * 7 + [ctypes.c_void_p]
    lib.tokcompileAtsSample.restype = ctypes.c_int
    lib.tokcompileKernelErrorString.argtypes = [ctypes.c_int32]
    lib.tokcompileKernelErrorString.restype = ctypes.c_char_p
    return lib
