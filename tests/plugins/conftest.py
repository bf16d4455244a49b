"""Session fixture: one CMake build directory of the plugins/ project for every test here."""

from __future__ import annotations

import pytest
from plugin_build import CMakeBuild, configure, missing_tools


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory: pytest.TempPathFactory) -> CMakeBuild:
    """Configured once (CUDA archs 80;86;89;90; TensorRT headers when found); tests build targets."""
    reason = missing_tools()
    if reason is not None:
        pytest.skip(reason)
    return configure(tmp_path_factory.mktemp("plugins_build"))
