"""AdaViT: heads, sub-layers and tokens really skipped (staged) equals the official masked form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_adavit import official_masked_adavit

import tokcompile
from tokcompile import TokcompileError
from tokcompile.methods import adapt_checkpoint, apply_method, get_method, resolve_config
from tokcompile.methods.adavit import checkpoint_adapter
from tokcompile.models import create_model

BATCH = 8


@pytest.fixture(scope="module")
def official(adavit_official):
    """(zoo model, official-format state, its .pth path): ``bundle_fixtures.adavit_official``."""
    return adavit_official


@pytest.fixture(scope="module")
def adavit_bundle(method_bundle):
    """The suite's shared AdaViT bundle: built from the official-format checkpoint, buckets 32,64."""
    return method_bundle("adavit")


def test_official_checkpoint_keys_map_to_timm(official):
    model, state, _ = official
    backbone, heads = checkpoint_adapter(state)
    expected = model.state_dict()
    assert backbone.keys() == expected.keys()
    assert all(torch.equal(backbone[k], expected[k]) for k in expected)
    depth = len(model.blocks)
    assert len(heads) == 2 * (depth + 2 * (depth - 1))  # token selector in every block, head/layer from 1
    assert checkpoint_adapter(expected) == (expected, {})
    # every method reads the checkpoint through the same adapters: the dense twin has the same digest
    assert adapt_checkpoint(state)[0].keys() == expected.keys()


def test_batch_equals_official_masked_form_per_image(official, adavit_bundle):
    model, state, _ = official
    runner = tokcompile.load(adavit_bundle)
    images = torch.randn(BATCH, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(3))
    got = runner.run(images.numpy())
    skipped = {"tokens": 0, "heads": 0, "layers": 0}
    for i in range(BATCH):
        logits, decisions = official_masked_adavit(model, state, images[i : i + 1])
        np.testing.assert_allclose(got["logits"][i], logits[0].numpy(), atol=1e-4, rtol=0)
        for block, (tokens, heads, layers) in enumerate(decisions):
            assert np.array_equal(got[f"tokens_{block}"][i], tokens[0].numpy()), (i, block)
            assert np.array_equal(got[f"heads_{block}"][i], heads[0].numpy()), (i, block)
            assert np.array_equal(got[f"layers_{block}"][i], layers[0].numpy()), (i, block)
            skipped["tokens"] += int((~tokens).sum())
            skipped["heads"] += int((~heads).sum())
            skipped["layers"] += int((~layers).sum())
    assert all(skipped.values()), skipped  # the case exercises every kind of skipping


def test_stages_compute_only_kept_rows_and_heads(official, adavit_bundle):
    model, _, _ = official
    runner = tokcompile.load(adavit_bundle)
    stages = runner.manifest.stages
    depth = len(model.blocks)
    assert len(stages) == depth + 1
    N = runner.manifest.model.num_tokens
    assert [(d.name, d.max) for d in stages[2].extra_dims] == [("heads", 2), ("mlp_tokens", N)]
    assert stages[0].extra_dims == []  # block 0 has no head / sub-layer gates (keep_layers 1)
    feeds: list[dict[str, tuple]] = []
    calls = runner.engine.calls
    runner.engine.calls = [
        (lambda outs, feed, call=call: feeds.append({k: v.shape for k, v in feed.items()}) or call(outs, feed))
        for call in calls
    ]
    images = torch.randn(BATCH, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(3)).numpy()
    got = runner.run(images)
    for k in range(1, depth):  # stage k + 1 computes block k from the cut made at the end of stage k
        dims = {d.name: d for d in stages[k].extra_dims}
        heads = dims["heads"].values
        width = feeds[k + 1][next(n for n, v in zip(stages[k + 1].inputs, stages[k + 1].values_in) if v == heads[0])][1]
        assert width == max(1, int(got[f"head_count_{k}"].max())), k
        token_inputs = [n for n, v in zip(stages[k + 1].inputs, stages[k + 1].values_in) if v in stages[k].token_values]
        assert token_inputs and all(feeds[k + 1][n][1] < N for n in token_inputs), k


def test_random_decision_heads_are_announced(models):
    model, spec = models("test_vit")
    m = get_method("adavit")
    _, info = apply_method(model, spec, m, resolve_config(m, spec, {}), "fp32")
    assert any("RANDOM" in w for w in info["method_warnings"])


def test_checkpoint_whose_decision_heads_do_not_fit_is_refused(official, tmp_path):
    model, state, _ = official
    bad = dict(state)
    bad["blocks.2.head_select.mlp_head.weight"] = torch.zeros(5, model.embed_dim)
    path = tmp_path / "bad.pth"
    torch.save({"model": bad}, path)
    torch_model, spec, _, heads = create_model("test_vit", weights=str(path), checkpoint_adapter=adapt_checkpoint)
    m = get_method("adavit")
    with pytest.raises(TokcompileError, match="blocks.2.head_select.mlp_head.weight' is shape"):
        apply_method(torch_model, spec, m, resolve_config(m, spec, {}), "fp32", method_state=heads)


def test_cli_threshold_flags(capsys, tmp_path):
    from cli_helpers import assert_user_error, run

    out = tmp_path / "b"
    code, _, err = run(capsys, "build", "test_vit", "--method", "adavit", "--head-threshold", "1", "-o", str(out))
    assert_user_error(code, err, r"--head-threshold must be in \(0, 1\), got 1.0")
    assert not out.exists()


@pytest.mark.parametrize(
    "params, message",
    [({"token_threshold": 1.5}, "--token-threshold must be in"), ({"keep_layers": 99}, "--keep-layers")],
)
def test_bad_parameters(models, params, message):
    _, spec = models("test_vit")
    with pytest.raises(TokcompileError, match=message):
        resolve_config(get_method("adavit"), spec, params)
