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
    model, spec, record, _ = create_model("test_vit", weights="random", seed=7)
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
    loaded, _, got, _ = create_model("test_vit", weights=str(path))
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


def test_a_checkpoint_adapter_splits_off_method_tensors(reference, tmp_path):
    """create_model's hook: the adapter a method supplies maps its checkpoint layout to the timm
    state dict plus method tensors, which come back explicitly and count in the digest."""
    model, record = reference
    state = {k.replace("head.", "classifier."): v.clone().contiguous() for k, v in model.state_dict().items()}
    state["gate.weight"] = torch.ones(2, 3)
    path = tmp_path / "method.safetensors"
    save_file(state, str(path))
    calls = []

    def adapter(got: dict) -> tuple[dict, dict]:
        calls.append(sorted(got))
        backbone = {k.replace("classifier.", "head."): v for k, v in got.items() if not k.startswith("gate.")}
        return backbone, {k: v for k, v in got.items() if k.startswith("gate.")}

    with pytest.raises(TokcompileError, match="does not match the model"):  # no adapter: loaded as is
        create_model("test_vit", weights=str(path))
    loaded = create_model("test_vit", weights=str(path), checkpoint_adapter=adapter)
    assert calls == [sorted(state)]
    assert loaded.method_state.keys() == {"gate.weight"} and loaded.weights["method_tensors"] == 1
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert loaded.weights["digest"] != record["digest"]  # the method tensors are part of the weights
    assert create_model("test_vit", weights="random", seed=7, checkpoint_adapter=adapter).method_state == {}


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(TokcompileError, match="cannot be read"):
        read_checkpoint(path)


def test_mismatching_checkpoint_names_keys(tmp_path):
    other, _, _, _ = create_model("deit_t", weights="random")
    path = tmp_path / "deit_t.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(
        TokcompileError, match=r"pos_embed \(checkpoint \(1, 197, 192\), model \(1, 101, 64\)\) has width 192"
    ):
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


def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _bicubic_grid(pos: torch.Tensor, prefix: int, old: int, new: tuple[int, int]) -> torch.Tensor:
    """Reference: prefix rows kept, the old × old grid resized bicubically (align_corners off, no antialias)."""
    grid = pos[:, prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([pos[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1)], dim=1)


def test_checkpoint_on_another_grid_is_resampled_and_recorded(tmp_path, caplog):
    big, _, _, _ = create_model("test_vit", weights="random", seed=3, img_size=224)  # 14 × 14 patches
    path = _save(big.state_dict(), tmp_path / "w224.safetensors")
    with caplog.at_level("INFO", logger="tokcompile"):
        model, spec, record, _ = create_model("test_vit", weights=path)  # 160 px: 10 × 10
    assert spec.grid == (10, 10)
    assert record["resampled"] == {
        "tensor": "pos_embed",
        "from_grid": [14, 14],
        "to_grid": [10, 10],
        "prefix_tokens": 1,
        "interpolation": "bicubic",
        "antialias": False,
    }
    assert sum("resampled pos_embed" in r.getMessage() for r in caplog.records) == 1  # said once
    expected = _bicubic_grid(big.pos_embed.detach(), 1, 14, (10, 10))
    assert torch.allclose(model.pos_embed.detach(), expected, atol=1e-6)
    assert torch.equal(model.pos_embed[:, 0], big.pos_embed[:, 0])  # the CLS position as it was
    assert torch.equal(model.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)


def test_dinov2_checkpoint_at_518_px_loads_at_98(tmp_path):
    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2}
    big, _, _, _ = create_model("vit_small_patch14_dinov2", weights="random", img_size=518, **kwargs)
    assert tuple(big.pos_embed.shape) == (1, 1370, 32)  # 37 × 37 + CLS, DINOv2's pretrained grid
    path = _save(big.state_dict(), tmp_path / "d518.safetensors")
    model, spec, record, _ = create_model("vit_small_patch14_dinov2", weights=path, img_size=98, **kwargs)
    assert tuple(model.pos_embed.shape) == (1, 50, 32) and record["resampled"]["from_grid"] == [37, 37]
    assert torch.allclose(model.pos_embed.detach(), _bicubic_grid(big.pos_embed.detach(), 1, 37, (7, 7)), atol=1e-6)


@pytest.mark.parametrize(
    "shape, pattern",
    [
        ((1, 101, 32), r"pos_embed \(checkpoint \(1, 101, 32\), model \(1, 101, 64\)\) has width 32, the model 64"),
        ((1, 100, 64), r"fit 0 prefix position\(s\) \+ a 10² grid: the checkpoint has another number of class"),
        ((1, 61, 64), r"61 positions are not 1 prefix position\(s\) \+ a square grid; its grid is not square"),
    ],
)
def test_resampling_that_cannot_apply_is_a_labelled_error(reference, tmp_path, shape, pattern):
    model, _ = reference
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"] = torch.zeros(shape)
    path = _save(state, tmp_path / "w.safetensors")
    with pytest.raises(TokcompileError, match=pattern) as info:
        create_model("test_vit", weights=path)
    assert "\n" not in str(info.value) and "w.safetensors" in str(info.value)
