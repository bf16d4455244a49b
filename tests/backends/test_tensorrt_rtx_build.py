"""A real TensorRT builder in the test suite: TensorRT for RTX builds every bundle ahead of time.

``tensorrt-rtx-cu13`` (in the ``dev`` extra) carries the full builder and ONNX parser and builds
engines for SM 7.5-12.x on a machine without a GPU. Every method × {fp32, fp16} on test_vit goes
through ``tokcompile.build(..., backend="tensorrt-rtx", target_sm="80")``, every stage, and the
engine's optimization profiles are checked against shapes this file computes on its own from
the stage's ONNX inputs (their symbolic dims: batch, tokens, heads, mlp_tokens) and the buckets
the manifest records for the boundary that feeds the stage. A parse or build failure fails.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from bundle_fixtures import RTX_TARGET
from cli_helpers import assert_user_error, run
from onnx import TensorProto, helper

import tokcompile
from tokcompile import TokcompileError, _defaults
from tokcompile.backends import get_backend
from tokcompile.backends.base import BuildOptions
from tokcompile.backends.tensorrt.build import EngineBuildError, engine_from_onnx
from tokcompile.runtime.bundle import read_manifest
from tokcompile.runtime.commands import tensorrt_rtx_command, trtexec_command

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e '.[dev]')")

TARGET = RTX_TARGET  # rtx_bundle (bundle_fixtures.py) builds for this SM, staged methods with RTX_BUCKETS
FULL = 101  # test_vit: 10×10 patches + CLS
# test_vit's extra data-dependent dims (AdaViT): kept heads of 2, MLP rows of all 101 tokens
EXTRA_FULL = {"heads": 2, "mlp_tokens": FULL}
METHODS = ("none", "evit", "tome", "ats", "avit", "adavit")
STAGED = ("ats", "avit", "adavit")
# Every bundle build here is the file's own (no default test shares a TensorRT for RTX bundle):
# 5-10 s each on 2 cores for one file, 25-65 s for the staged methods' one file per stage, almost
# all of it torch.onnx.export. They run in the slow run (pytest -m slow; CI runs both).
CASES = [pytest.param(m, p, id=f"{m}-{p}") for m in METHODS for p in ("fp32", "fp16")]
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "imagenet-sample"  # ../shared from the repo root


def onnx_inputs(path: Path) -> dict[str, list[int | str]]:
    """Input name → dims (int, or the symbolic dim's name) of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: [d.dim_param if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }


def expected_profiles(
    inputs: dict[str, list[int | str]], buckets: list[int], full: int = FULL, extra: dict[str, int] = EXTRA_FULL
) -> list[dict]:
    """The profiles a stage must have: one per bucket with the token dim fixed, then a catch-all
    taking token counts 1..full; batch 1..max, optimised for the bucket batch; extra dims over
    their whole range in every profile."""
    batch = (1, min(_defaults.BUCKET_BATCH, _defaults.TRT_MAX_BATCH), _defaults.TRT_MAX_BATCH)
    has_tokens = any("tokens" in dims for dims in inputs.values())

    def shapes(tokens: tuple[int, int, int]) -> dict[str, list[list[int]]]:
        out = {}
        for name, dims in inputs.items():
            triple = []
            for i in range(3):
                ranges = {"batch": batch, "tokens": tokens, **{d: (1, n, n) for d, n in extra.items()}}
                triple.append([ranges[d][i] if isinstance(d, str) else d for d in dims])
            out[name] = triple
        return out

    bucket_profiles = [{"bucket": b, "shapes": shapes((b, b, b))} for b in sorted(set(buckets))] if has_tokens else []
    return [*bucket_profiles, {"bucket": "fallback", "shapes": shapes((1, full, full))}]


def plugin_attribute_nodes(path: Path) -> list[str]:
    """Nodes (graph and function bodies) that carry plugin attributes, i.e. would be plugins."""
    model = onnx.load(str(path), load_external_data=False)
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    return [n.op_type for n in nodes if any(a.name == "plugin_namespace" for a in n.attribute)]


@pytest.mark.slow
@pytest.mark.parametrize("method, precision", CASES)
def test_every_stage_builds_with_the_planned_profiles(rtx_bundle, method: str, precision: str) -> None:
    directory = rtx_bundle(method, precision)
    manifest = read_manifest(directory)
    assert manifest.backend == "tensorrt-rtx" and manifest.tf32 is False
    block = manifest.tensorrt
    assert block.flavour == "tensorrt-rtx" and block.version == trt.__version__
    assert block.target_sm == [TARGET] and block.plugin_library is None
    # --plugins auto under TensorRT for RTX: every token op as native layers
    assert manifest.lowering.plugins == "off" and manifest.lowering.plugin_nodes == {}
    version = ".".join(trt.__version__.split(".")[:2])
    stages = manifest.stages
    assert len(stages) > 1 or method not in STAGED
    for k, stage in enumerate(stages):
        built = stage.engine
        assert built.file == f"{Path(stage.file).stem}.rtx{version}-sm{TARGET}.engine"
        assert (directory / built.file).stat().st_size > 0 and built.file in manifest.files
        assert built.layers > 0 and built.plugin_layers == 0
        assert not plugin_attribute_nodes(directory / stage.file)
        fed = stages[k - 1].buckets if k > 0 else []  # the buckets of the boundary before the stage
        assert built.profiles == expected_profiles(onnx_inputs(directory / stage.file), fed)
        if k > 0 and method in STAGED:
            assert len(built.profiles) >= 3  # several buckets + the catch-all


@pytest.mark.slow
def test_deit_t_ats_with_calibrated_buckets(checkpoint, tmp_path) -> None:
    """Real per-image token counts (64 sample photos) give several buckets per boundary; every
    stage builds with one profile per bucket. ATS at blocks 4 and 8 keeps it to three stages."""
    if not SAMPLES.is_dir():
        pytest.skip(f"no sample images at {SAMPLES}")
    out = tmp_path / "deit_t-ats"
    tokcompile.build(
        "deit_t",
        method="ats",
        weights=str(checkpoint("deit_t")),
        output=out,
        backend="tensorrt-rtx",
        target_sm=str(TARGET),
        calib=SAMPLES,
        layers=(4, 8),
    )
    manifest = read_manifest(out)
    assert manifest.tokens.calibration["source"] == str(SAMPLES)
    stages = manifest.stages
    assert len(stages) == 3 and all(len(s.buckets) >= 2 for s in stages[:-1])
    for k, stage in enumerate(stages):
        fed = stages[k - 1].buckets if k > 0 else []
        assert stage.engine.profiles == expected_profiles(onnx_inputs(out / stage.file), fed, 197, {})
        assert stage.engine.plugin_layers == 0 and (out / stage.engine.file).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("tf32", [False, True])
def test_builder_and_report_make_the_same_tf32_choice(rtx_bundle, tf32: bool) -> None:
    """TensorRT for RTX enables TF32 unless told otherwise, as trtexec does: the builder config must
    hold the bundle's choice, and the report's command lines must say the same."""
    assert trt.Builder(trt.Logger()).create_builder_config().get_flag(trt.BuilderFlag.TF32) is True
    directory = rtx_bundle("evit", "fp32", **({"tf32": True} if tf32 else {}))
    manifest = read_manifest(directory)
    script = (directory / "engines.sh").read_text()
    assert manifest.tf32 is tf32
    stage = manifest.stages[0]
    assert stage.engine.tf32 is tf32  # read back from TensorRT's IBuilderConfig
    line = next(x for x in script.splitlines() if x.startswith("tensorrt_rtx "))
    assert line == tensorrt_rtx_command(manifest, stage)
    assert ("--noTF32" in line.split()) is not tf32 and f"--computeCapabilities={TARGET}" in line.split()
    manifest.tensorrt, stage.engine = None, None  # the trtexec line such a bundle plans for full TensorRT
    assert ("--noTF32" in trtexec_command(manifest, stage).split()) is not tf32


@pytest.mark.slow
def test_load_runs_the_engines_or_falls_back_to_onnx_runtime(rtx_bundle, caplog) -> None:
    """Where TensorRT for RTX cannot run (no GPU here), the ONNX files run, with a warning; where it
    runs on one of the bundle's SMs, the engines must agree with ONNX Runtime."""
    import logging

    import numpy as np

    from tokcompile.backends.tensorrt.env import gpu_info, run_problem

    directory = rtx_bundle("evit", "fp32")
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    reference = tokcompile.load(directory, backend="onnxruntime")
    problem = run_problem("tensorrt_rtx", "")
    if problem is None:
        gpu = gpu_info()
        if gpu is None or gpu["compute_capability"] != f"sm_{TARGET}":
            pytest.skip(f"the bundle targets sm_{TARGET}; this GPU is {gpu}")
        runner = tokcompile.load(directory)
        assert runner.backend == "tensorrt-rtx"
        np.testing.assert_allclose(runner(x), reference(x), atol=1e-3, rtol=0)
        return
    with caplog.at_level(logging.WARNING, logger="tokcompile"):
        runner = tokcompile.load(directory)
    assert runner.backend == "onnxruntime" and runner.file == "model.onnx"
    assert f"was built for TensorRT for RTX, which cannot run here ({problem})" in caplog.text
    np.testing.assert_array_equal(runner(x), reference(x))
    with pytest.raises(TokcompileError, match="which cannot run here"):
        tokcompile.load(directory, backend="tensorrt-rtx")
    with pytest.raises(TokcompileError, match="has no TensorRT engines; rebuild it with --backend tensorrt$"):
        tokcompile.load(directory, backend="tensorrt")


def test_options_tensorrt_for_rtx_refuses(tmp_path, capsys) -> None:
    """One line each, before anything is exported; nothing at --output."""
    out = tmp_path / "b"
    base = ["build", "test_vit", "--weights", "random", "--backend", "tensorrt-rtx", "-o", str(out)]
    cases = [
        (["--plugins", "on"], r"--plugins on is not possible with --backend tensorrt-rtx: .* aborts on plugin layers"),
        (["--timing-cache", "t.cache"], r"--timing-cache applies to --backend tensorrt \(or auto\), not tensorrt-rtx"),
        (["--plugin-lib", "x.so"], r"--plugin-lib applies to .*not tensorrt-rtx: .*parser aborts on plugin layers"),
        (["--target-sm", "90"], r"--target-sm 90 is not supported by TensorRT for RTX [\d.]+; choose from 75,80"),
        (["--target-sm", "eighty"], r"--target-sm must be compute capabilities like 80,86, got 'eighty'"),
    ]
    for extra, pattern in cases:
        code, _, err = run(capsys, *base, *extra)
        assert_user_error(code, err, pattern)
        assert not out.exists()


def test_plugins_auto_exports_no_plugin_node_for_any_registered_op() -> None:
    """TensorRT for RTX runs no plugins: whatever the registry says of an op (plugin, native), its
    node carries no plugin attributes under ``--plugins auto``; ``off`` stays off."""
    from tokcompile.ops import TOKEN_OPS
    from tokcompile.ops.lowering import plugin_attributes, plugin_lowering

    backend = get_backend("tensorrt-rtx")
    ops = list(TOKEN_OPS.values())
    assert any(op.plugin for op in ops)  # there is something a plugin could have been used for
    for mode in ("auto", "off"):
        with plugin_lowering(backend.lowering(mode, ops)):
            assert all(not plugin_attributes(op.plugin, op.native) for op in ops)
    with plugin_lowering(get_backend("tensorrt").lowering("auto", ops)):  # full TensorRT keeps the choice
        chosen = {op.onnx_name for op in ops if plugin_attributes(op.plugin, op.native)}
    assert chosen == {op.onnx_name for op in ops if op.plugin and not op.native}


def test_default_targets_are_every_supported_sm_from_ampere_on() -> None:
    backend = get_backend("tensorrt-rtx")
    options = backend.check_options(BuildOptions())
    members = [int(n[2:]) for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
    assert {75, 80, 86, 89, 120} <= set(members)
    assert list(options.target_sm) == sorted(sm for sm in members if sm >= 80)
    assert backend.check_options(BuildOptions(target_sm="86,sm_80,8.9")).target_sm == (80, 86, 89)
    assert backend.check_options(BuildOptions(target_sm="75")).target_sm == (75,)  # Turing on request


# --- errors a user can act on -------------------------------------------------------------------


def _reshape_model(path: Path) -> Path:
    """x [batch, tokens] → Reshape to [batch, 2, -1]: builds for even token counts only."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [0, 2, -1])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _profile(bucket: int | str, low: int, high: int) -> dict:
    return {"bucket": bucket, "shapes": {"x": [[1, low], [16, high], [64, high]]}}


def test_build_failure_names_the_file_and_the_bucket(tmp_path) -> None:
    backend = get_backend("tensorrt-rtx")
    options = backend.check_options(BuildOptions(target_sm=str(TARGET)))
    path = _reshape_model(tmp_path / "stage3.onnx")
    plan = [_profile(40, 40, 40), _profile(41, 41, 41), _profile("fallback", 1, 100)]  # opt, max: even
    with pytest.raises(EngineBuildError) as info:
        engine_from_onnx(trt, backend, path, plan, options, 100)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"TensorRT for RTX {trt.__version__} could not build stage3.onnx for bucket 41 (profile #1 of 3): "
    )
    assert "reshape" in message.lower()  # TensorRT's own first error, quoted
    good = engine_from_onnx(trt, backend, path, [plan[0], plan[2]], options, 100)  # the other buckets build
    assert [p["bucket"] for p in good.profiles] == [40, "fallback"] and good.tf32 is False


def test_parse_failure_names_the_file_and_the_node(tmp_path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="nowhere")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("nowhere", 1)])
    onnx.save(model, str(tmp_path / "stage0.onnx"))
    backend = get_backend("tensorrt-rtx")
    options = backend.check_options(BuildOptions(target_sm=str(TARGET)))
    plan = [{"bucket": "fallback", "shapes": {"x": [[1, 8], [16, 8], [64, 8]]}}]
    with pytest.raises(EngineBuildError, match=r"^TensorRT for RTX [\d.]+ could not parse stage0\.onnx: .*'mystery'"):
        engine_from_onnx(trt, backend, tmp_path / "stage0.onnx", plan, options)


def test_cli_build_failure_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch) -> None:
    """An impossible profile (an image size the network does not take) through the whole build."""
    backend = type(get_backend("tensorrt-rtx"))
    planned = backend.plan

    def impossible(self, directory, stages, full_count, options):
        plans = planned(self, directory, stages, full_count, options)
        for triple in plans[0][-1]["shapes"].values():
            for shape in triple:
                shape[-1] += 1  # 160 → 161
        return plans

    monkeypatch.setattr(backend, "plan", impossible)
    out = tmp_path / "b"
    code, _, err = run(
        capsys, "build", "-q", "test_vit", "--method", "none", "--weights", "random", "--backend", "tensorrt-rtx",
        "--target-sm", str(TARGET), "-o", str(out),
    )  # fmt: skip
    assert_user_error(
        code,
        err,
        r"TensorRT for RTX [\d.]+ could not build model\.onnx for the catch-all profile, tokens 1\.\.101 "
        r"\(profile #0 of 1\): .*images",
    )
    assert not out.exists() and not list(tmp_path.iterdir())
