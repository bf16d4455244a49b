"""A-ViT: halted tokens removed (staged, bucketed) equals the official masked form per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bundle_fixtures import AVIT_BETA, AVIT_GAMMA
from reference_avit import official_masked_avit

import tokcompile
from tokcompile import TokcompileError
from tokcompile.methods import get_method, resolve_config
from tokcompile.ops.compact_tokens import compact_tokens
from tokcompile.runtime.staged import fit_tokens

# random weights: channel 0 ~ N(0, 1), so tokens halt after a few blocks (the shared bundle's γ, β)
GAMMA, BETA = AVIT_GAMMA, AVIT_BETA


def test_compact_tokens_orders_kept_first():
    """Kept positions ascending, then the others ascending (the op's contract), checked against
    lists built here: by hand, and for random masks with the all-kept and CLS-only extremes."""
    keep = torch.tensor([[True, False, True, True, False], [True, True, False, False, False]])
    rows, count = compact_tokens(keep)
    assert rows.tolist() == [[0, 2, 3, 1, 4], [0, 1, 2, 3, 4]] and count.tolist() == [3, 2]
    keep = torch.rand(16, 101, generator=torch.Generator().manual_seed(0)) < 0.4
    keep[:, 0] = True
    keep[1, :] = True
    keep[2, 1:] = False
    rows, count = compact_tokens(keep)
    for b, mask in enumerate(keep.tolist()):
        kept = [p for p, k in enumerate(mask) if k]
        assert rows[b].tolist() == kept + [p for p, k in enumerate(mask) if not k], b
        assert int(count[b]) == len(kept), b


@pytest.fixture(scope="module")
def avit_bundle(method_bundle):
    return method_bundle("avit")


def test_batch_equals_official_masked_form_and_each_image_alone(avit_bundle, models):
    model, spec = models("test_vit")
    runner = tokcompile.load(avit_bundle)
    x = np.random.default_rng(0).standard_normal((8, 3, 160, 160), dtype=np.float32)
    got = runner.run(x)
    counts = np.stack([got[f"count_{i}"] for i in range(spec.depth - 1)], 1)
    assert counts.min() < spec.num_tokens and len({tuple(c) for c in counts}) > 1, "tokens must halt, per image"
    ref, _ = official_masked_avit(model, torch.from_numpy(x), GAMMA, BETA)
    assert np.abs(got["logits"] - ref.numpy()).max() <= 1e-4
    for b in range(8):
        alone = runner.run(x[b : b + 1])
        assert np.abs(alone["logits"][0] - got["logits"][b]).max() <= 1e-5
        assert [int(alone[f"count_{i}"][0]) for i in range(spec.depth - 1)] == counts[b].tolist()


def test_split_batches_give_the_same_outputs(avit_bundle, models):
    """Splitting a batch by count at boundaries changes the buckets run, never an output."""
    runner = tokcompile.load(avit_bundle)
    x = np.random.default_rng(1).standard_normal((8, 3, 160, 160), dtype=np.float32)
    split = runner.run(x)
    runner.engine.split_overhead = 1.0  # split whenever it saves a slot
    finer = runner.run(x)
    runner.engine.split_overhead = None
    whole = runner.run(x)
    assert sum(sum(c.values()) for c in runner.engine.stats.buckets.values()) > 3 * (len(runner.manifest.stages) - 1)
    for got in (split, finer):
        assert got.keys() == whole.keys()
        assert np.abs(got["logits"] - whole["logits"]).max() <= 1e-5
        for name in (n for n in whole if n.startswith(("count_", "kept_ids_"))):
            width = max(got[name].shape[-1], whole[name].shape[-1]) if got[name].ndim > 1 else None
            a, b = (v if width is None else fit_tokens(v, width) for v in (got[name], whole[name]))
            assert np.array_equal(a, b), name


def test_avit_compare_and_stages(avit_bundle):
    from tokcompile.verify.compare import compare

    manifest = tokcompile.load(avit_bundle).manifest
    assert len(manifest.stages) == manifest.model.depth
    assert manifest.method.params == {"gamma": GAMMA, "beta": BETA, "eps": 0.01}
    report = compare(avit_bundle, batch=4, samples=1)
    depth = manifest.model.depth
    assert report.passed and report.layer_agreement == {
        f"{k}_{i}": 1.0 for i in range(depth - 1) for k in ("count", "kept_ids")
    }


def test_avit_refuses_models_without_single_cls(models):
    _, spec = models("test_vit2")
    with pytest.raises(TokcompileError, match="needs exactly one prefix token"):
        resolve_config(get_method("avit"), spec, {})
    _, spec = models("test_vit")
    with pytest.raises(TokcompileError, match="--eps must be in"):
        resolve_config(get_method("avit"), spec, {"eps": 2.0})


def test_warns_when_nothing_halts(calibrated, caplog):
    """DeiT-like weights with the released β: nothing halts, and the build's calibration step
    (``calibrated``: no export before it) says so; the build copies its warnings into the manifest."""
    with caplog.at_level("WARNING", logger="tokcompile"):
        found, stages = calibrated("avit", buckets="64", beta=75.0)
    assert len(stages) > 2 and all(b.min == b.max == 101 for b in found.tokens.boundaries)
    assert "no token was dropped" in caplog.text
    assert any("no token was dropped" in w for w in found.tokens.warnings)
