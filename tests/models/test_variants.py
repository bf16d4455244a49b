"""Every timm ViT variant the issue lists: EViT works on it, or refuses with the reason.

Random weights, depth cut to 4 blocks to keep the suite fast (the variant features live in
each block, the patch embedding and the head, not in the depth). Numerics against an eager
EViT walk of the timm modules that handles P prefix tokens, LayerScale, qk-norm and any head
(timm's own ``forward_head``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from reference_ats import eager_ats

from tokcompile import TokcompileError
from tokcompile.export.onnx import onnx_from_graph_module
from tokcompile.methods import apply_method, get_method, resolve_config
from tokcompile.models import create_model
from tokcompile.passes.graph_outputs import named_outputs as output_names

DEPTH = 4
VARIANTS = {
    "distilled": ("deit_small_distilled_patch16_224", {}),
    "registers": ("vit_small_patch14_reg4_dinov2", {"img_size": 224}),
    "layerscale": ("deit3_small_patch16_224", {}),
    "qk_norm": ("vit_small_patch16_224", {"qk_norm": True}),
    "patch14_224": ("vit_small_patch14_dinov2", {"img_size": 224}),
    "input_384": ("vit_small_patch16_384", {}),
}


def make(name: str, kwargs: dict):
    """(model, spec), created once per variant (passes rewrite captured copies, never the model)."""
    return _make(name, tuple(sorted(kwargs.items())))


@functools.cache
def _make(name: str, kwargs: tuple):
    model, spec, _, _ = create_model(name, weights="random", seed=0, depth=DEPTH, **dict(kwargs))
    with torch.no_grad():  # spread attention so top-k has no float32 near-ties (see conftest)
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * blk.attn.qkv.in_features] *= 4.0
            # DINOv2/DeiT-III LayerScale starts at 1e-5: blocks would barely move the tokens and
            # later layers would rank near-identical scores. 0.1 gives trained-like block updates.
            for ls in (blk.ls1, blk.ls2):
                if hasattr(ls, "gamma"):
                    ls.gamma.fill_(0.1)
    return model, spec


@torch.no_grad()
def eager_evit(model, images, layers, keep_rate, fuse):
    P = model.num_prefix_tokens
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    B, N, C = x.shape
    ids = torch.arange(N).expand(B, N)
    kept_ids = {}
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        B, N, C = x.shape
        q, k, v = a.qkv(blk.norm1(x)).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        A = (q @ k.transpose(-2, -1) * a.scale).softmax(-1)
        x = x + blk.ls1(a.proj(a.norm((A @ v).transpose(1, 2).reshape(B, N, C))))
        if i in layers:
            keep = math.ceil(keep_rate * (N - P))
            s = A[:, :, 0, P:].mean(1)
            _, idx = s.topk(keep, dim=1)
            rest, rest_ids = x[:, P:], ids[:, P:]
            kept_ids[i] = rest_ids.gather(1, idx)
            parts = [x[:, :P], rest.gather(1, idx.unsqueeze(-1).expand(-1, -1, C))]
            id_parts = [ids[:, :P], kept_ids[i]]
            if fuse:
                w = s.clone()
                w[torch.arange(B).unsqueeze(1), idx] = 0.0
                parts.append((w.unsqueeze(-1) * rest).sum(1, keepdim=True))
                id_parts.append(torch.full((B, 1), -1))
            x, ids = torch.cat(parts, 1), torch.cat(id_parts, 1)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return model.forward_head(model.norm(x)), kept_ids


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_evit_on_variant_matches_eager_reference(variant):
    name, kwargs = VARIANTS[variant]
    model, spec = make(name, kwargs)
    method = get_method("evit")
    config = resolve_config(method, spec, {})
    assert config.layers == (1, 2, 3)
    gm, info = apply_method(model, spec, method, config, "fp32", debug=True)
    x = torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dict(zip(info["outputs"], gm(x)))
    ref_logits, ref_kept = eager_evit(model, x, config.layers, config.keep_rate, config.fuse)
    assert (out["logits"] - ref_logits).abs().max() <= 1e-4
    for layer, ids in ref_kept.items():
        got = out[f"kept_ids_{layer}"]
        assert torch.equal(got.sort(1).values, ids.sort(1).values), f"{variant}: layer {layer} kept sets differ"
        # prefix tokens (CLS, distillation, registers) are never selected: they are always kept
        assert ((got >= spec.num_prefix_tokens) | (got == -1)).all()
    n0 = spec.num_tokens
    expected = [n0]
    for _ in config.layers:
        expected.append(spec.num_prefix_tokens + math.ceil(0.7 * (expected[-1] - spec.num_prefix_tokens)) + 1)
    assert info["tokens"]["sequence"] == expected


def test_prefix_tokens_survive_export_registers(tmp_path):
    """Five prefix tokens (CLS + 4 registers): the ONNX body protects them like the op does."""
    import onnxruntime as ort

    model, spec = make(*VARIANTS["registers"])
    method = get_method("evit")
    gm, info = apply_method(model, spec, method, resolve_config(method, spec, {}), "fp32")
    path = tmp_path / "m.onnx"
    onnx_from_graph_module(gm, spec.input_shape, path, output_names(gm))
    x = np.random.default_rng(0).standard_normal((2, *spec.input_shape), dtype=np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    with torch.no_grad():
        ref = gm(torch.from_numpy(x))
    assert np.abs(got[0] - ref[0].numpy()).max() <= 1e-4
    for g, r, name in zip(got, ref, info["outputs"]):
        if name.startswith("kept_ids_"):  # same sets; adjacent near-tied scores may swap order
            np.testing.assert_array_equal(np.sort(g, 1), np.sort(r.numpy(), 1))


@pytest.mark.parametrize(
    "name, kwargs, pattern",
    [
        ("vit_medium_patch16_gap_256", {}, r"has no class token \(global_pool='avg'\)"),
        ("test_vit2", {}, r"has no class token"),
        ("vit_base_patch16_xp_224", {"embed_dim": 64, "num_heads": 2}, r"not a sequential attention → MLP block"),
    ],
)
def test_evit_refuses_with_reason(name, kwargs, pattern):
    method = get_method("evit")
    with pytest.raises(TokcompileError, match=pattern):
        model, spec, _, _ = create_model(name, weights="random", depth=2, **kwargs)
        apply_method(model, spec, method, resolve_config(method, spec, {}), "fp32")


def test_model_kwargs_are_recorded_and_rebuilt(tmp_path):
    import tokcompile
    from tokcompile.runtime.reference import rebuild

    out = tmp_path / "b"
    result = tokcompile.build(
        "vit_small_patch14_dinov2", weights="random", output=out, model_kwargs={"img_size": 224, "depth": 2}
    )
    assert result.manifest.model.kwargs == {"img_size": 224, "depth": 2}
    assert result.manifest.model.input_shape == [3, 224, 224] and result.manifest.model.grid == [16, 16]
    gm, spec, _ = rebuild(result.manifest)
    assert spec.depth == 2 and spec.img_size == (224, 224)
    with pytest.raises(TokcompileError, match="cannot create .test_vit. with model arguments .*bogus_arg"):
        create_model("test_vit", weights="random", bogus_arg=1)


@pytest.mark.parametrize("variant", [*VARIANTS, "no_cls"])
def test_tome_on_variant_matches_eager_reference(variant):
    """ToMe works on every variant, models without a class token included (prefix tokens protected)."""
    from reference_tome import eager_tome

    name, kwargs = VARIANTS.get(variant, ("vit_medium_patch16_gap_256", {}))
    model, spec = make(name, kwargs)
    method = get_method("tome")
    config = resolve_config(method, spec, {"r": 8})
    gm, info = apply_method(model, spec, method, config, "fp32", debug=True)
    x = torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dict(zip(info["outputs"], gm(x)))
    P = spec.num_prefix_tokens
    for name_ in (n for n in info["outputs"] if n.startswith("merge_map_")):
        groups = out[name_]
        assert torch.equal(groups[:, :P], torch.arange(P).expand(2, P)), "prefix tokens stay first"
        assert not any((groups[:, P:] == p).any() for p in range(P)), "no token merges into a prefix token"
    if P > 2:  # official ToMe protects CLS and a distillation token only; the reference stops there
        assert torch.isfinite(out["logits"]).all()
        return
    ref_logits, ref_maps = eager_tome(model, x, config.r, True)
    assert (out["logits"] - ref_logits).abs().max() <= 1e-4
    for layer, ref in ref_maps.items():
        assert torch.equal(out[f"merge_map_{layer}"], ref), f"{variant}: block {layer} merge maps differ"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ats_on_variant_runs_or_refuses(variant):
    """ATS needs exactly one prefix token (CLS): distillation/register models are refused."""
    name, kwargs = VARIANTS[variant]
    model, spec = make(name, kwargs)
    method = get_method("ats")
    if spec.num_prefix_tokens != 1:
        with pytest.raises(TokcompileError, match="defined for one prefix token"):
            resolve_config(method, spec, {})
        return
    config = resolve_config(method, spec, {})
    gm, info = apply_method(model, spec, method, config, "fp32")
    assert info["stages"] == len(config.layers) + 1
    x = torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dict(zip(info["outputs"], gm(x)))
    budgets = dict(zip(config.layers, config.max_tokens))
    for b in range(2):  # each image of the padded batch against the per-image ATS of §3.2
        ref_logits, ref_kept = eager_ats(model, x[b : b + 1], budgets)
        assert (out["logits"][b] - ref_logits[0]).abs().max() <= 1e-4, variant
        for layer, ids in ref_kept.items():
            count = int(out[f"count_{layer}"][b])
            assert count == ids.size < spec.num_tokens, (variant, b, layer)
            assert out[f"kept_ids_{layer}"][b, :count].tolist() == ids.tolist(), (variant, b, layer)
