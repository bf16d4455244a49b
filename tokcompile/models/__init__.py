"""Models: aliases, weights, and capture of timm ViTs as FX graphs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from .. import _defaults
from ..errors import TokcompileError
from .aliases import ALIASES, resolve_model_name, vit_model_names
from .weights import (
    file_sha256,
    hub_reachable,
    load_state_dict_strict,
    read_checkpoint,
    resample_position_embedding,
    state_digest,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "CheckpointAdapter",
    "LoadedModel",
    "ModelSpec",
    "check_weights",
    "create_model",
    "model_spec",
    "resolve_model_name",
    "vit_model_names",
]

# A checkpoint in a method's own layout → (timm backbone state dict, the method's tensors by the
# names its adapter documents). Methods supply them (``Method.checkpoint_adapter``); a state dict
# the adapter does not recognise comes back unchanged with no method tensors.
CheckpointAdapter = Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class ModelSpec:
    """What the passes need to know about a ViT, read off the timm module."""

    name: str  # timm name
    depth: int
    embed_dim: int
    num_heads: int
    num_prefix_tokens: int
    has_class_token: bool
    global_pool: str
    img_size: tuple[int, int]
    num_patches: int
    num_classes: int
    patch_size: tuple[int, int]
    grid: tuple[int, int]  # patch rows, columns

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.img_size)


def _num_heads(model: torch.nn.Module) -> int:
    """The attention heads of the first block (0 when no module names them)."""
    blocks: Any = model.blocks
    heads: Any = next((m.num_heads for m in blocks[0].modules() if hasattr(m, "num_heads")), 0)
    return int(heads)


def spec_of(model: torch.nn.Module, name: str) -> ModelSpec:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TokcompileError(
            f"model '{name}' is a {type(model).__name__}, not a timm VisionTransformer; "
            "tokcompile works on ViT/DeiT models (see 'tokcompile list models')"
        )
    pe = model.patch_embed
    if len(model.blocks) == 0:
        raise TokcompileError(f"model '{name}' has no transformer blocks; check --model-arg depth")
    img, patch = tuple(pe.img_size), tuple(pe.patch_size)
    if any(s % p for s, p in zip(img, patch)) and not getattr(pe, "dynamic_img_pad", False):
        fits = ", ".join(str(s // p * p) for s, p in zip(img[:1], patch[:1]))
        raise TokcompileError(
            f"--img-size {img[0] if img[0] == img[1] else img} is not a multiple of the patch size "
            f"{patch[0]} of '{name}'; use e.g. {fits} or {int(fits) + patch[0]}"
        )
    return ModelSpec(
        name=name,
        depth=len(model.blocks),
        embed_dim=model.embed_dim,
        num_heads=_num_heads(model),
        num_prefix_tokens=model.num_prefix_tokens,
        has_class_token=model.cls_token is not None,
        global_pool=model.global_pool,
        img_size=tuple(pe.img_size),
        num_patches=pe.num_patches,
        num_classes=model.num_classes,
        patch_size=tuple(pe.patch_size),
        grid=tuple(pe.grid_size),
    )


SEED_MAX = 2**32 - 1  # numpy and torch generators both take [0, 2**32)


def _check_kwargs(timm_name: str, kwargs: dict[str, Any]) -> None:
    """Validate the model arguments tokcompile knows before timm sees them."""
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        sizes = list(size) if isinstance(size, (list, tuple)) else [size]
        if len(sizes) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
            raise TokcompileError(f"--img-size must be a positive integer (pixels), got {size!r}")
    for key in ("depth", "num_heads", "embed_dim"):
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TokcompileError(f"--model-arg {key} must be a positive integer, got {value!r}")


def _timm_model(timm_name: str, pretrained: bool, kwargs: dict[str, Any]) -> torch.nn.Module:
    import timm

    _check_kwargs(timm_name, kwargs)
    try:
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError, IndexError, ZeroDivisionError, RuntimeError) as exc:
        if pretrained and isinstance(exc, RuntimeError):
            raise  # a download failure: the caller words it
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TokcompileError(
            f"timm cannot create '{timm_name}' with model arguments {kwargs} ({reason}); check --model-arg/--img-size"
        ) from None


def model_spec(name: str, **timm_kwargs: Any) -> ModelSpec:
    """The ModelSpec of ``name`` with ``timm_kwargs``, from a model built on the meta device: its
    shapes without allocating or initialising a weight (tens of milliseconds), so every argument
    that depends on the model (layers, buckets, image size) is checked before weights load."""
    timm_name = resolve_model_name(name)
    with torch.device("meta"):
        model = _timm_model(timm_name, False, timm_kwargs)
    return spec_of(model, timm_name)


def check_weights(weights: Optional[str], seed: Optional[int]) -> tuple[str, int]:
    """``--weights`` and ``--seed`` resolved (defaults) and checked without reading a file."""
    weights = weights if weights is not None else _defaults.WEIGHTS
    seed = seed if seed is not None else _defaults.SEED
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise TokcompileError(f"--seed must be an integer in [0, {SEED_MAX}], got {seed!r}")
    if weights not in ("auto", "pretrained", "random"):
        path = Path(os.path.expanduser(weights))
        if not path.exists() and path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise TokcompileError(
                f"--weights must be auto, pretrained, random or a checkpoint path; '{weights}' is none of these"
            )
        if not path.is_file():
            raise TokcompileError(f"checkpoint '{path}' does not exist; pass an existing file to --weights")
    return weights, seed


class LoadedModel(NamedTuple):
    """What ``create_model`` returns."""

    model: torch.nn.Module  # timm ViT in eval mode
    spec: ModelSpec
    weights: dict[str, Any]  # the manifest's weights record (source, digest, ...)
    method_state: dict[str, torch.Tensor]  # method tensors the checkpoint carried beside the backbone


def create_model(
    name: str,
    weights: Optional[str] = None,
    seed: Optional[int] = None,
    checkpoint_adapter: Optional[CheckpointAdapter] = None,
    **timm_kwargs: Any,
) -> LoadedModel:
    """Build a timm ViT in eval mode and load its weights.

    weights: ``auto`` (pretrained when timm's hub answers, else random with a warning),
    ``pretrained``, ``random``, or a path to ``.safetensors``/``.pth``/``.pt`` (a checkpoint whose
    position grid differs from the model's is resampled and the record says so, see
    ``weights.resample_position_embedding``). ``timm_kwargs``
    go to ``timm.create_model`` (e.g. ``img_size=224`` for a DINOv2 model, ``qk_norm=True``).
    ``checkpoint_adapter`` turns a checkpoint file in a method's own layout into the timm state
    dict and the method's tensors (``methods.adapt_checkpoint``); without one a file loads as is.
    Returns (model, spec, weights record for the manifest, method tensors). With ``auto`` falling
    back to random weights the record carries a ``notice`` for the caller to show once its inputs
    are validated. The digest covers the method tensors too.
    """

    timm_name = resolve_model_name(name)
    weights, seed = check_weights(weights, seed)
    record: dict[str, Any]
    notice = None
    method_state: dict[str, torch.Tensor] = {}
    if weights == "auto":
        weights = "pretrained" if hub_reachable() else "random"
        if weights == "random":
            notice = (
                f"WARNING: pretrained weights for {timm_name} cannot be downloaded here; using RANDOM "
                f"weights (seed {seed}). Accuracy figures of this bundle mean nothing. Pass --weights PATH "
                "for real weights."
            )
    torch.manual_seed(seed)
    if weights == "pretrained":
        if not hub_reachable():
            raise TokcompileError(
                f"pretrained weights for '{timm_name}' cannot be downloaded (no connection to "
                "huggingface.co); use --weights random or --weights PATH"
            )
        try:
            model = _timm_model(timm_name, True, timm_kwargs)
        except TokcompileError:
            raise
        except Exception as exc:
            raise TokcompileError(
                f"downloading pretrained weights for '{timm_name}' failed ({type(exc).__name__}); "
                "use --weights random or --weights PATH"
            ) from None
        record = {"source": "pretrained", "tag": dict(getattr(model, "pretrained_cfg", {})).get("tag")}
    elif weights == "random":
        model = _timm_model(timm_name, False, timm_kwargs)
        record = {"source": "random", "seed": seed}
    else:
        path = Path(os.path.expanduser(weights))
        state = read_checkpoint(path)
        if checkpoint_adapter is not None:
            state, method_state = checkpoint_adapter(state)
        model = _timm_model(timm_name, False, timm_kwargs)
        resampled = resample_position_embedding(model, state, str(path))
        load_state_dict_strict(model, state, str(path))
        record = {"source": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
        if resampled is not None:
            record["resampled"] = resampled
        if method_state:  # returned; methods.apply_method hands them to the method's passes
            record["method_tensors"] = len(method_state)
    model.eval()
    spec = spec_of(model, timm_name)
    record["digest"] = state_digest(model, method_state or None)
    if notice:
        record["notice"] = notice
    return LoadedModel(model, spec, record, method_state)
