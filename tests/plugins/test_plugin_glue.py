"""TensorRT glue of the plugins: both library variants build against TensorRT's headers and behave.

Needs only the headers (no TensorRT runtime, no GPU): found through $TensorRT_ROOT/include or the
standard include path, else the build tests are skipped with the reason. Checks
  - the exports of the two variants (``nm -D``): the dynamic one exports exactly getCreators and
    setLoggerFinder and references no TensorRT symbol; the self-registering one exports nothing;
    both define the EvitSelect and AtsSample creators;
  - behaviour, through ``tokcompile_plugin_glue_check`` (plugin_glue_check.cpp): fakes of the
    interfaces TensorRT hands to plugins drive field parsing, output types/shapes, formats,
    validation messages, serialization, error recorders, and static registration;
  - the YAML schemas (no build needed): parseable, attributes exactly the creators' fields.
The tests that build (CMake, the plugin libraries: a build of its own) are marked slow.

Locally: ``TensorRT_ROOT=/path/with/include python -m pytest tests/plugins/test_plugin_glue.py``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from plugin_build import (
    DYNAMIC_PLUGINS_LIB,
    GLUE_CHECK,
    REPO,
    STATIC_PLUGINS_LIB,
    CMakeBuild,
    find_tensorrt,
    tensorrt_version,
)

# name -> (YAML schema, plugin fields in creator order, inputs, outputs)
PLUGINS = {
    "EvitSelect": (
        "plugins/evitSelectPlugin/EvitSelect_PluginConfig.yaml",
        ["k", "num_prefix", "fuse"],
        ["x", "attn"],
        ["out", "kept"],
    ),
    "AtsSample": (
        "plugins/atsSamplePlugin/AtsSample_PluginConfig.yaml",
        ["num_samples"],
        ["attn", "v", "valid"],
        ["rows", "count"],
    ),
}


@pytest.fixture(scope="module")
def plugins(request: pytest.FixtureRequest) -> CMakeBuild:
    _, include, reason = find_tensorrt()
    if include is None:
        pytest.skip(reason)
    cmake_build: CMakeBuild = request.getfixturevalue("cmake_build")
    if cmake_build.tensorrt_include is None:
        pytest.skip(f"the session build was configured without TensorRT headers ({reason})")
    for target in ("tokcompile_plugins", "tokcompile_plugins_dynamic", GLUE_CHECK):
        cmake_build.build(target)
    return cmake_build


def _nm(*args: str) -> list[list[str]]:
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found")
    out = subprocess.run(["nm", *args], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def _defined_dynamic(path) -> set[str]:
    return {fields[-1] for fields in _nm("-D", "--defined-only", str(path)) if fields[1] in "TtDdBbRrWwVv"}


def _undefined_dynamic(path) -> set[str]:
    return {fields[-1].split("@")[0] for fields in _nm("-D", "--undefined-only", str(path))}


@pytest.mark.slow
def test_configured_with_the_headers(plugins: CMakeBuild) -> None:
    version = tensorrt_version(plugins.tensorrt_include)
    assert f"TensorRT {version} headers: {plugins.tensorrt_include}" in plugins.configure_log


@pytest.mark.slow
def test_dynamic_variant_exports_getcreators_only(plugins: CMakeBuild) -> None:
    lib = plugins.path(DYNAMIC_PLUGINS_LIB)
    assert _defined_dynamic(lib) == {"getCreators", "setLoggerFinder"}
    # Loaded by TensorRT itself (also the lean runtime): no TensorRT symbol may be needed.
    undefined = _undefined_dynamic(lib)
    assert not {s for s in undefined if "PluginRegistry" in s or s.startswith(("nvinfer", "_ZN8nvinfer"))}


@pytest.mark.slow
def test_static_variant_registers_instead_of_exporting(plugins: CMakeBuild) -> None:
    lib = plugins.path(STATIC_PLUGINS_LIB)
    assert "getCreators" not in _defined_dynamic(lib)
    assert _defined_dynamic(lib) == set()


@pytest.mark.slow
@pytest.mark.parametrize("lib", [STATIC_PLUGINS_LIB, DYNAMIC_PLUGINS_LIB])
def test_both_variants_define_the_creators(plugins: CMakeBuild, lib: str) -> None:
    symbols = {
        " ".join(fields[2:]) for fields in _nm("-C", "--defined-only", str(plugins.path(lib))) if len(fields) > 2
    }
    for name in PLUGINS:
        assert any(f"tokcompile::plugin::{name}PluginCreator::createPlugin(" in s for s in symbols), (lib, name)
        assert any(f"tokcompile::plugin::{name}Plugin::enqueue(" in s for s in symbols), (lib, name)


@pytest.mark.slow
def test_glue_check(plugins: CMakeBuild) -> None:
    result = subprocess.run(
        [
            str(plugins.path(GLUE_CHECK)),
            str(plugins.path(STATIC_PLUGINS_LIB)),
            str(plugins.path(DYNAMIC_PLUGINS_LIB)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("0 failed"), result.stdout


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_yaml_schema(name: str) -> None:
    path, fields, inputs, outputs = PLUGINS[name]
    schema = yaml.safe_load((REPO / path).read_text())
    assert schema["name"] == name
    assert schema["interface"] == "IPluginV3"
    version = schema["versions"]["1"]
    # Exactly the op's attributes; plugin_namespace / plugin_version are lookup keys, not fields.
    assert version["attributes"] == fields
    assert set(version["attribute_types"]) == set(fields)
    assert all(version["attribute_types"][f] == "int32" for f in fields)
    assert version["attributes_required"] == fields
    assert version["inputs"] == inputs
    assert version["outputs"] == outputs
    assert set(version["input_dims"]) == set(inputs)
    assert set(version["output_dims"]) == set(outputs)
    for combination in version["supported_input_types"]:
        (types,) = combination.values()
        assert set(types) == set(inputs)
