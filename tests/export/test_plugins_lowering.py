"""``--plugins on|off|auto``: which token-op nodes carry the TensorRT plugin attributes.

Bundles of test_vit with EViT (static counts, native lowering by default) and ATS (staged; the
plugin by default: its body accumulates in float64), built through the session ``bundle``
fixture (the auto bundles are the ones other test files use). Checks, per mode: the manifest's
``lowering`` record, ``onnx.checker`` (full), ONNX Runtime outputs identical across modes, and
the plugin nodes' attributes against the plugins' YAML schemas. Four new builds (~70 s on 2 CPU
cores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import tokcompile
from tokcompile import TokcompileError, _defaults
from tokcompile.ops import PLUGIN_OPS, TOKEN_OPS
from tokcompile.ops.lowering import PLUGIN_ATTRIBUTES, check_backend, check_mode, plugin_attributes, plugin_lowering

ROOT = Path(__file__).resolve().parents[2]
YAML = {
    "EvitSelect": ROOT / "plugins" / "evitSelectPlugin" / "EvitSelect_PluginConfig.yaml",
    "AtsSample": ROOT / "plugins" / "atsSamplePlugin" / "AtsSample_PluginConfig.yaml",
}
MODES = ("on", "off", "auto")
ATS_BUCKETS = "40,60,80"  # as tests/runtime/test_staged.py: the auto bundle is shared
# What the TensorRT ONNX parser passes for each ONNX attribute type (onnx-tensorrt loadFields).
FIELD_TYPES = {
    onnx.AttributeProto.INT: "int32",
    onnx.AttributeProto.FLOAT: "float32",
    onnx.AttributeProto.STRING: "char",
}


def _build(bundle, method: str, mode: str) -> Path:
    params = {"buckets": ATS_BUCKETS} if method == "ats" else {}
    if mode != "auto":  # auto is the default: reuse the bundle other test files build
        params["plugins"] = mode
    return bundle("test_vit", method=method, **params)


@pytest.fixture(scope="module")
def bundles(bundle) -> dict[tuple[str, str], Path]:
    return {(method, mode): _build(bundle, method, mode) for method in ("evit", "ats") for mode in MODES}


def _models(directory: Path) -> list[onnx.ModelProto]:
    manifest = tokcompile.load(directory).manifest
    return [onnx.load(str(directory / s.file)) for s in manifest.stages]


def _token_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "tokcompile"]


EXPECTED = {
    # (method, mode): (plugin_nodes, native_nodes); test_vit: EViT at 3 blocks, ATS at 4 blocks
    ("evit", "on"): ({"EvitSelect": 3}, {}),
    ("evit", "off"): ({}, {"EvitSelect": 3}),
    ("evit", "auto"): ({}, {"EvitSelect": 3}),
    ("ats", "on"): ({"AtsSample": 4}, {}),
    ("ats", "off"): ({}, {"AtsSample": 4}),
    ("ats", "auto"): ({}, {"AtsSample": 4}),  # the float32 + int64 body lowers natively
}


@pytest.mark.parametrize(("method", "mode"), list(EXPECTED))
def test_manifest_and_nodes_follow_the_mode(bundles, method: str, mode: str) -> None:
    directory = bundles[(method, mode)]
    manifest = tokcompile.load(directory).manifest
    plugin, native = EXPECTED[(method, mode)]
    lowering = manifest.lowering
    assert (lowering.plugins, lowering.plugin_nodes, lowering.native_nodes) == (mode, plugin, native)
    routed: dict[str, int] = {}
    for model in _models(directory):
        onnx.checker.check_model(model, full_check=True)
        for node in _token_nodes(model):
            names = {a.name for a in node.attribute}
            if names & set(PLUGIN_ATTRIBUTES):
                assert names >= set(PLUGIN_ATTRIBUTES), node
                routed[node.op_type] = routed.get(node.op_type, 0) + 1
        # every custom node still has its function body (ONNX Runtime's, and TensorRT's fallback)
        assert {n.op_type for n in _token_nodes(model)} <= {f.name for f in model.functions}
    assert routed == plugin


@pytest.mark.parametrize("method", ["evit", "ats"])
def test_onnxruntime_outputs_identical_across_modes(bundles, method: str) -> None:
    images = np.random.default_rng(5).standard_normal((3, 3, 160, 160), dtype=np.float32)
    outputs = {mode: tokcompile.load(bundles[(method, mode)]).run(images) for mode in MODES}
    for mode in ("on", "off"):
        assert list(outputs[mode]) == list(outputs["auto"])
        for name, value in outputs["auto"].items():
            np.testing.assert_array_equal(outputs[mode][name], value, err_msg=f"{method} {mode} {name}")


def _schema(op: str) -> dict:
    path = YAML[op]
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: every plugin ships its YAML schema"
    schema = yaml.safe_load(path.read_text())
    return schema["versions"][str(_defaults.PLUGIN_VERSION)]


@pytest.mark.parametrize(("method", "op"), [("evit", "EvitSelect"), ("ats", "AtsSample")])
def test_plugin_nodes_carry_exactly_the_yaml_attributes(bundles, method: str, op: str) -> None:
    """The parser passes a node attribute to the plugin only if the creator declares it, so the
    YAML lists the op's own attributes; plugin_namespace/plugin_version are lookup keys."""
    version = _schema(op)
    nodes = [n for m in _models(bundles[(method, "on")]) for n in _token_nodes(m) if n.op_type == op]
    assert nodes
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        assert onnx.helper.get_attribute_value(attrs["plugin_namespace"]).decode() == "tokcompile"
        assert onnx.helper.get_attribute_value(attrs["plugin_version"]).decode() == "1"
        own = {k: v for k, v in attrs.items() if k not in PLUGIN_ATTRIBUTES}
        assert set(own) == set(version["attributes"])
        for name, attr in own.items():
            assert FIELD_TYPES[attr.type] == version["attribute_types"][name], name


def test_only_ops_with_a_plugin_are_ever_routed() -> None:
    assert PLUGIN_OPS == {"EvitSelect", "AtsSample"}
    with plugin_lowering("on"):
        for op in TOKEN_OPS.values():
            assert bool(plugin_attributes(op.plugin, op.native)) == (op.onnx_name in PLUGIN_OPS), op.onnx_name
    with plugin_lowering("auto"):
        routed = {op.onnx_name for op in TOKEN_OPS.values() if plugin_attributes(op.plugin, op.native)}
        assert routed == set()  # every op has a native lowering
    with plugin_lowering("off"):
        assert not any(plugin_attributes(op.plugin, op.native) for op in TOKEN_OPS.values())


def test_mode_is_scoped_to_the_export() -> None:
    evit = next(op for op in TOKEN_OPS.values() if op.onnx_name == "EvitSelect")
    assert not plugin_attributes(evit.plugin, evit.native)  # default auto
    with plugin_lowering("on"):
        assert plugin_attributes(evit.plugin, evit.native)
    assert not plugin_attributes(evit.plugin, evit.native)


def test_bad_mode_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(TokcompileError, match=r"^--plugins must be on, off or auto, got 'x'$"):
        check_mode("x")
    with pytest.raises(TokcompileError, match="--plugins must be on, off or auto, got 'maybe'"):
        tokcompile.build("test_vit", weights="random", output=tmp_path / "b", plugins="maybe")
    assert not (tmp_path / "b").exists()


def test_tensorrt_refuses_only_bodies_without_native_lowering() -> None:
    """Every op lowers natively since issue 9 (AtsSample's body has no float64 any more), so no
    mode is refused; an op marked ``native=False`` still is, with a one-line reason."""
    for mode in MODES:
        check_backend(mode, "tensorrt", TOKEN_OPS.values())
    ats = next(op for op in TOKEN_OPS.values() if op.onnx_name == "AtsSample")
    assert ats.native and ats.plugin
    float64_body = dataclasses.replace(ats, native=False)
    with pytest.raises(TokcompileError, match="--plugins off lowers AtsSample to its ONNX body") as info:
        check_backend("off", "tensorrt", [float64_body])
    assert "\n" not in str(info.value)
    check_backend("off", "onnxruntime", [float64_body])  # ONNX Runtime runs any body exactly
    check_backend("auto", "tensorrt", [float64_body])  # auto and on route it to the plugin
    check_backend("on", "tensorrt", [float64_body])
