"""``--plugins on|off|auto``: which token-op nodes carry the TensorRT plugin attributes.

The mode acts only while the graph is exported (``ops.lowering.plugin_lowering``), so the modes
are checked on exports, not bundle builds: test_vit with EViT (static counts) and ATS (its
pipeline without ``split_stages``: one file holding all four AtsSample nodes) exported under each
mode with ``onnx_from_graph_module(..., plugins=mode)``, as a build exports every stage. Checks,
per mode: the manifest's ``lowering`` record computed from the export's facts (and, for the
default mode, read from the suite's shared bundles, so the build's wiring is checked too),
``onnx.checker`` (full), ONNX Runtime outputs identical across modes, and the plugin nodes'
attributes against the plugins' YAML schemas. Six exports (~25 s on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from pass_helpers import method_graph

import tokcompile
from tokcompile import TokcompileError, _defaults
from tokcompile.backends import get_backend
from tokcompile.export.onnx import onnx_from_graph_module
from tokcompile.manifest import Lowering, StageEntry
from tokcompile.methods import get_method
from tokcompile.ops import PLUGIN_OPS, TOKEN_OPS
from tokcompile.ops.lowering import (
    PLUGIN_ATTRIBUTES,
    check_mode,
    lowering_record,
    plugin_attributes,
    plugin_lowering,
)
from tokcompile.passes.graph_outputs import named_outputs
from tokcompile.passes.output_features import output_features

ROOT = Path(__file__).resolve().parents[2]
YAML = {
    "EvitSelect": ROOT / "plugins" / "evitSelectPlugin" / "EvitSelect_PluginConfig.yaml",
    "AtsSample": ROOT / "plugins" / "atsSamplePlugin" / "AtsSample_PluginConfig.yaml",
}
MODES = ("on", "off", "auto")
# What the TensorRT ONNX parser passes for each ONNX attribute type (onnx-tensorrt loadFields).
FIELD_TYPES = {
    onnx.AttributeProto.INT: "int32",
    onnx.AttributeProto.FLOAT: "float32",
    onnx.AttributeProto.STRING: "char",
}


@dataclasses.dataclass
class Export:
    path: Path
    facts: dict
    model: onnx.ModelProto


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory) -> dict[tuple[str, str], Export]:
    """(method, mode) → test_vit's graph of the method exported under the mode."""
    folder = tmp_path_factory.mktemp("lowering")
    _, spec = models("test_vit")
    out = {}
    for method in ("evit", "ats"):
        gm, _ = method_graph(models, method, passes=(*get_method(method).pipeline, output_features))
        for mode in MODES:
            path = folder / f"{method}-{mode}.onnx"
            facts = onnx_from_graph_module(gm, spec.input_shape, path, named_outputs(gm), plugins=mode)
            out[(method, mode)] = Export(path, facts, onnx.load(str(path)))
    return out


def _token_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "tokcompile"]


def _stage(export: Export) -> StageEntry:
    """The export as a build's one stage entry (the lowering record reads its node counts)."""
    f, file = export.facts, export.path.name
    return StageEntry(
        0,
        file,
        f["inputs"],
        f["inputs"],
        f["outputs"],
        file,
        "fp32",
        plugin_nodes=f["plugin_nodes"],
        native_nodes=f["native_nodes"],
    )


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
def test_manifest_and_nodes_follow_the_mode(exports, method: str, mode: str) -> None:
    export = exports[(method, mode)]
    plugin, native = EXPECTED[(method, mode)]
    assert lowering_record(mode, mode, [_stage(export)]) == Lowering(mode, plugin, native)
    onnx.checker.check_model(export.model, full_check=True)
    routed: dict[str, int] = {}
    for node in _token_nodes(export.model):
        names = {a.name for a in node.attribute}
        if names & set(PLUGIN_ATTRIBUTES):
            assert names >= set(PLUGIN_ATTRIBUTES), node
            routed[node.op_type] = routed.get(node.op_type, 0) + 1
    # every custom node still has its function body (ONNX Runtime's, and TensorRT's fallback)
    assert {n.op_type for n in _token_nodes(export.model)} <= {f.name for f in export.model.functions}
    assert routed == plugin


@pytest.mark.parametrize("method", ["evit", "ats"])
def test_built_bundles_record_the_default_mode(method_bundle, method: str) -> None:
    """What a build writes: the shared bundles (``--plugins auto``, every stage file summed)."""
    plugin, native = EXPECTED[(method, "auto")]
    lowering = tokcompile.load(method_bundle(method)).manifest.lowering
    assert (lowering.plugins, lowering.plugin_nodes, lowering.native_nodes) == ("auto", plugin, native)
    assert lowering.requested is None


@pytest.mark.parametrize("method", ["evit", "ats"])
def test_onnxruntime_outputs_identical_across_modes(exports, method: str) -> None:
    images = np.random.default_rng(5).standard_normal((3, 3, 160, 160), dtype=np.float32)
    outputs = {}
    for mode in MODES:
        session = ort.InferenceSession(str(exports[(method, mode)].path), providers=["CPUExecutionProvider"])
        outputs[mode] = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
    assert len(outputs["auto"]) > 2  # logits, features and the method's own outputs
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
def test_plugin_nodes_carry_exactly_the_yaml_attributes(exports, method: str, op: str) -> None:
    """The parser passes a node attribute to the plugin only if the creator declares it, so the
    YAML lists the op's own attributes; plugin_namespace/plugin_version are lookup keys."""
    version = _schema(op)
    nodes = [n for n in _token_nodes(exports[(method, "on")].model) if n.op_type == op]
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
    tensorrt, onnxruntime = get_backend("tensorrt"), get_backend("onnxruntime")
    for mode in MODES:
        assert tensorrt.lowering(mode, TOKEN_OPS.values()) == mode
    ats = next(op for op in TOKEN_OPS.values() if op.onnx_name == "AtsSample")
    assert ats.native and ats.plugin
    float64_body = dataclasses.replace(ats, native=False)
    with pytest.raises(TokcompileError, match="--plugins off lowers AtsSample to its ONNX body") as info:
        tensorrt.lowering("off", [float64_body])
    assert "\n" not in str(info.value)
    assert onnxruntime.lowering("off", [float64_body]) == "off"  # ONNX Runtime runs any body exactly
    assert tensorrt.lowering("auto", [float64_body]) == "auto"  # auto and on route it to the plugin
    assert tensorrt.lowering("on", [float64_body]) == "on"
