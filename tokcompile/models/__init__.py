"""Models: aliases, weights, and capture of timm ViTs as FX graphs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .. import _defaults
from ..errors import TokcompileError
from .aliases import ALIASES, resolve_model_name, vit_model_names
from .tracing import METHOD_STATE_ATTR
from .weights import (
    file_sha256,
    hub_reachable,
    load_state_dict_strict,
    read_checkpoint,
    resample_position_embedding,
    split_method_state,
    state_digest,
)

logger = logging.getLogger(__name__)

__all__ = ["ALIASES", "ModelSpec", "create_model", "resolve_model_name", "vit_model_names"]


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


def spec_of(model: torch.nn.Module, name: str) -> ModelSpec:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TokcompileError(
            f"model '{name}' is a {type(model).__name__}, not a timm VisionTransformer; "
            "tokcompile works on ViT/DeiT models (see 'tokcompile list models')"
        )
    pe = model.patch_embed
    return ModelSpec(
        name=name,
        depth=len(model.blocks),
        embed_dim=model.embed_dim,
        num_heads=next((m.num_heads for m in model.blocks[0].modules() if hasattr(m, "num_heads")), 0),
        num_prefix_tokens=model.num_prefix_tokens,
        has_class_token=model.cls_token is not None,
        global_pool=model.global_pool,
        img_size=tuple(pe.img_size),
        num_patches=pe.num_patches,
        num_classes=model.num_classes,
        patch_size=tuple(pe.patch_size),
        grid=tuple(pe.grid_size),
    )


def _timm_model(timm_name: str, pretrained: bool, kwargs: dict[str, Any]) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise TokcompileError(
            f"timm model '{timm_name}' does not accept model arguments {kwargs} ({exc}); check --model-arg/--img-size"
        ) from None


def create_model(
    name: str, weights: Optional[str] = None, seed: Optional[int] = None, **timm_kwargs: Any
) -> tuple[torch.nn.Module, ModelSpec, dict[str, Any]]:
    """Build a timm ViT in eval mode and load its weights.

    weights: ``auto`` (pretrained when timm's hub answers, else random with a warning),
    ``pretrained``, ``random``, or a path to ``.safetensors``/``.pth``/``.pt`` (a checkpoint whose
    position grid differs from the model's is resampled and the record says so, see
    ``weights.resample_position_embedding``). ``timm_kwargs``
    go to ``timm.create_model`` (e.g. ``img_size=224`` for a DINOv2 model, ``qk_norm=True``).
    Returns (model, spec, weights record for the manifest). With ``auto`` falling back to random
    weights the record carries a ``notice`` for the caller to show once its inputs are validated.
    """

    timm_name = resolve_model_name(name)
    weights = weights if weights is not None else _defaults.WEIGHTS
    seed = seed if seed is not None else _defaults.SEED
    record: dict[str, Any]
    notice = None
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
        record = {"source": "pretrained", "tag": model.pretrained_cfg.get("tag")}
    elif weights == "random":
        model = _timm_model(timm_name, False, timm_kwargs)
        record = {"source": "random", "seed": seed}
    else:
        path = Path(os.path.expanduser(weights))
        if not path.exists() and path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise TokcompileError(
                f"--weights must be auto, pretrained, random or a checkpoint path; '{weights}' is none of these"
            )
        state, method_state = split_method_state(read_checkpoint(path))
        model = _timm_model(timm_name, False, timm_kwargs)
        resampled = resample_position_embedding(model, state, str(path))
        load_state_dict_strict(model, state, str(path))
        record = {"source": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
        if resampled is not None:
            record["resampled"] = resampled
        if method_state:  # read by the method's pass through the captured graph (AdaViT decision heads)
            setattr(model, METHOD_STATE_ATTR, method_state)
            record["method_tensors"] = len(method_state)
    model.eval()
    spec = spec_of(model, timm_name)
    record["digest"] = state_digest(model, getattr(model, METHOD_STATE_ATTR, None))
    if notice:
        record["notice"] = notice
    return model, spec, record
