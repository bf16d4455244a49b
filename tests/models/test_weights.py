"""Weights: checkpoint formats, mismatches, aliases."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tokcompile import TokcompileError
from tokcompile.models import create_model, resolve_model_name, spec_of
from tokcompile.models.weights import read_checkpoint


@pytest.fixture(scope="module")
def reference():
    model, spec, record = create_model("test_vit", weights="random", seed=7)
    return model, record


def test_random_weights_are_reproducible(reference):
    _, record = reference
    assert record["source"] == "random" and record["seed"] == 7
    assert create_model("test_vit", weights="random", seed=7)[2]["digest"] == record["digest"]
    assert create_model("test_vit", weights="random", seed=8)[2]["digest"] != record["digest"]


@pytest.mark.parametrize("fmt", ["safetensors", "pth-top", "pth-model", "pth-state_dict", "pth-module-prefix"])
def test_checkpoint_formats_load_the_same_weights(reference, tmp_path, fmt):
    model, record = reference
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        if fmt == "pth-model":
            obj = {"model": state, "epoch": 3}
        elif fmt == "pth-state_dict":
            obj = {"state_dict": state}
        elif fmt == "pth-module-prefix":
            obj = {f"module.{k}": v for k, v in state.items()}
        else:
            obj = state
        torch.save(obj, path)
    loaded, _, got = create_model("test_vit", weights=str(path))
    assert got["source"] == "file" and got["digest"] == record["digest"]
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(TokcompileError, match="does not exist"):
        create_model("test_vit", weights=str(tmp_path / "nope.pth"))


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(TokcompileError, match="cannot be read"):
        create_model("test_vit", weights=str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(TokcompileError, match="cannot be read"):
        read_checkpoint(path)


def test_mismatching_checkpoint_names_keys(tmp_path):
    other, _, _ = create_model("deit_t", weights="random")
    path = tmp_path / "deit_t.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(TokcompileError, match=r"does not match the model: .*shape mismatch cls_token .*pos_embed"):
        create_model("test_vit", weights=str(path))
    partial = {k: v.contiguous() for k, v in create_model("test_vit", weights="random")[0].state_dict().items()}
    del partial["head.weight"]
    partial["extra.bias"] = torch.zeros(2)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(TokcompileError, match=r"missing head.weight; unexpected extra.bias"):
        create_model("test_vit", weights=str(tmp_path / "partial.safetensors"))


def test_aliases_and_unknown_names():
    assert resolve_model_name("deit_s") == "deit_small_patch16_224"
    assert resolve_model_name("vit_b16") == "vit_base_patch16_224"
    assert resolve_model_name("deit_small_distilled_patch16_224") == "deit_small_distilled_patch16_224"
    with pytest.raises(TokcompileError, match="unknown model 'deit_xs'; did you mean .*deit_s"):
        resolve_model_name("deit_xs")
    with pytest.raises(TokcompileError, match="unknown model 'resnet18' .*any timm VisionTransformer name works"):
        create_model("resnet18", weights="random")
    with pytest.raises(TokcompileError, match="model 'lin' is a Linear, not a timm VisionTransformer"):
        spec_of(torch.nn.Linear(2, 2), "lin")


def test_weights_value_that_is_neither_mode_nor_path():
    with pytest.raises(TokcompileError, match="--weights must be auto, pretrained, random or a checkpoint path"):
        create_model("test_vit", weights="imagenet")
