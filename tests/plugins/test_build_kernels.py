"""The CUDA kernels of plugins/ compile for sm_80, sm_86, sm_89 and sm_90 (CPU-only check).

Builds the ``tokcompile_kernels`` target (libtokcompile_kernels.so: kernels + extern "C"
launchers, no TensorRT) with CMake + Ninja + nvcc in the session build directory. Skipped when
cmake, ninja or nvcc is missing. The build took 18-37 s on the shared 2-core machine (nvcc, 2 .cu
files x 4 architectures), a build of its own: the tests are marked slow (pytest -m slow; CI runs
them).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from plugin_build import DEFAULT_ARCHS, KERNELS_LIB, LAUNCHERS, CMakeBuild, bind_kernels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kernels(cmake_build: CMakeBuild) -> CMakeBuild:
    cmake_build.build("tokcompile_kernels")
    return cmake_build


def test_kernels_library_builds(kernels: CMakeBuild) -> None:
    assert kernels.path(KERNELS_LIB).is_file()
    assert f"CUDA architectures: {DEFAULT_ARCHS}" in kernels.configure_log


def test_every_architecture_gets_machine_code_and_ptx(kernels: CMakeBuild) -> None:
    commands = subprocess.run(
        ["ninja", "-C", str(kernels.directory), "-t", "commands", "tokcompile_kernels"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for source in ("evitSelectKernel.cu", "atsSampleKernel.cu"):
        line = next(cmd for cmd in commands.splitlines() if source in cmd and "nvcc" in cmd)
        for arch in DEFAULT_ARCHS.split(";"):
            assert f"arch=compute_{arch},code=[compute_{arch},sm_{arch}]" in line, (source, arch)
        assert "use_fast_math" not in line  # the ATS kernel relies on IEEE float rounding


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not found")
def test_only_the_launchers_are_exported(kernels: CMakeBuild) -> None:
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(kernels.path(KERNELS_LIB))], capture_output=True, text=True, check=True
    ).stdout
    exported = sorted(line.split()[-1] for line in symbols.splitlines() if line.split()[1:2] == ["T"])
    assert exported == sorted(LAUNCHERS)


def test_launchers_refuse_bad_arguments_without_a_gpu(kernels: CMakeBuild) -> None:
    """Argument checks run before any CUDA call: safe on CPU-only machines (no kernel is launched)."""
    lib = bind_kernels(kernels.path(KERNELS_LIB))
    invalid_value = 1  # cudaErrorInvalidValue
    assert lib.tokcompileKernelErrorString(invalid_value) == b"invalid argument"

    def evit(batch: int, k: int, num_prefix: int = 1, fuse: int = 1, dtype: int = 1) -> int:
        return lib.tokcompileEvitSelect(None, None, None, None, batch, 6, 197, 384, k, num_prefix, fuse, dtype, None)

    assert evit(batch=0, k=138) == 0  # empty batch: nothing to do
    assert evit(batch=2, k=138) == invalid_value  # null tensors
    assert evit(batch=2, k=0) == invalid_value
    assert evit(batch=2, k=196) == invalid_value  # k == N - P is the identity, not this kernel
    assert evit(batch=2, k=138, fuse=2) == invalid_value
    assert evit(batch=2, k=138, num_prefix=-1) == invalid_value

    def ats(batch: int, num_samples: int) -> int:
        return lib.tokcompileAtsSample(None, None, None, None, None, batch, 6, 197, 64, num_samples, 1, 3, None)

    assert ats(batch=0, num_samples=196) == 0
    assert ats(batch=2, num_samples=196) == invalid_value
    assert ats(batch=2, num_samples=0) == invalid_value
