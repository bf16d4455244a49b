"""Model weights: ``auto``, ``pretrained``, ``random`` or a checkpoint path.

Checkpoints are read without unpickling arbitrary objects: safetensors, or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import TokcompileError

logger = logging.getLogger(__name__)

HUB_HOST = ("huggingface.co", 443)
# Official DeiT/EViT checkpoints nest the state dict under one of these keys.
NESTED_KEYS = ("model", "state_dict", "model_state_dict")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether timm's weight host answers; a quick probe so offline builds do not hang."""
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth/.pt/.bin`` state dict; raise TokcompileError if unusable."""
    if not path.is_file():
        raise TokcompileError(f"checkpoint '{path}' does not exist; pass an existing file to --weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch warns before it refuses; the error below says it all
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or pickled with arbitrary objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokcompileError(
            f"checkpoint '{path}' cannot be read ({first[:160]}); "
            "pass a .safetensors file or a state dict saved with torch.save"
        ) from None
    for key in NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TokcompileError(
            f"checkpoint '{path}' holds no state dict (expected tensors at the top level or "
            f"under one of {', '.join(NESTED_KEYS)})"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``, naming the first mismatching keys when it does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for k, v in expected.items():
        if k not in state or state[k].shape != v.shape:
            continue
        if v.is_floating_point() and not state[k].is_floating_point():
            raise TokcompileError(
                f"checkpoint '{source}': tensor '{k}' has dtype {state[k].dtype}, the model needs floating point "
                "weights (check that --weights is a model checkpoint)"
            )
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            raise TokcompileError(
                f"checkpoint '{source}': tensor '{k}' holds NaN or Inf values; the checkpoint is corrupt "
                "(re-export it from a trained model)"
            )
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"shape mismatch {', '.join(wrong[:3])}")
    if problems:
        raise TokcompileError(
            f"checkpoint '{source}' does not match the model: {'; '.join(problems)} "
            "(check that --weights belongs to this model)"
        )
    model.load_state_dict(state, strict=True)


POS_EMBED = "pos_embed"
POS_EMBED_INTERPOLATION = "bicubic"  # timm's, with antialias off as timm's checkpoint filters load it
MAX_PREFIX_GUESS = 8  # class + distillation + register tokens: prefix counts tried to explain a mismatch


def resample_position_embedding(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str
) -> Optional[dict[str, Any]]:
    """Resample the checkpoint's ``pos_embed`` in place to the model's patch grid when the grids differ.

    state[pos_embed]: [1, P + g·g, C] from a square g × g grid; the model's: [1, P + gh·gw, C]
    with the same P prefix positions (class/distillation/register tokens that carry one; none
    for ``no_embed_class`` models) and width C. The grid is resized bicubically with antialias
    off (timm's ``resample_abs_pos_embed``), prefix positions kept as they are. Returns the
    record for the manifest (tensor, from/to grid, interpolation), or None when nothing needed
    resampling. Raises TokcompileError naming the tensor, both shapes and what to check where
    resampling cannot apply: another width, another prefix count, a grid that is not square.
    """
    if POS_EMBED not in state or getattr(model, POS_EMBED, None) is None:
        return None
    got, want = state[POS_EMBED], getattr(model, POS_EMBED)
    if got.shape == want.shape:
        return None
    shapes = f"checkpoint {tuple(got.shape)}, model {tuple(want.shape)}"
    if got.dim() != 3 or got.shape[0] != 1:
        raise TokcompileError(
            f"checkpoint '{source}': {POS_EMBED} ({shapes}) is not [1, tokens, width]; "
            "check that --weights belongs to this model"
        )
    if got.shape[2] != want.shape[2]:
        raise TokcompileError(
            f"checkpoint '{source}': {POS_EMBED} ({shapes}) has width {got.shape[2]}, the model {want.shape[2]}: "
            "the checkpoint is for another model size; check the model name and --model-arg embed_dim"
        )
    vit: Any = model  # a timm VisionTransformer
    prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
    rows, cols = (int(v) for v in vit.patch_embed.grid_size)
    side = _square_side(got.shape[1] - prefix)
    if side is None:
        others = [p for p in range(MAX_PREFIX_GUESS + 1) if p != prefix and _square_side(got.shape[1] - p)]
        hint = (
            f"it would fit {others[0]} prefix position(s) + a {_square_side(got.shape[1] - others[0])}² grid: "
            f"the checkpoint has another number of class/register tokens than the model's {prefix}; "
            "check the model variant (e.g. --model-arg reg_tokens, class_token, no_embed_class)"
            if others
            else "its grid is not square, so it cannot be inferred; resample it to the model's grid yourself"
        )
        raise TokcompileError(
            f"checkpoint '{source}': cannot resample {POS_EMBED} ({shapes}): {got.shape[1]} positions are not "
            f"{prefix} prefix position(s) + a square grid; {hint}"
        )
    from timm.layers import resample_abs_pos_embed

    state[POS_EMBED] = resample_abs_pos_embed(
        got,
        new_size=[rows, cols],
        old_size=[side, side],
        num_prefix_tokens=prefix,
        interpolation=POS_EMBED_INTERPOLATION,
        antialias=False,
    ).contiguous()
    record = {
        "tensor": POS_EMBED,
        "from_grid": [side, side],
        "to_grid": [rows, cols],
        "prefix_tokens": prefix,
        "interpolation": POS_EMBED_INTERPOLATION,
        "antialias": False,
    }
    logger.info(
        "weights: resampled %s of '%s' from a %d×%d to the model's %d×%d patch grid (%s, antialias off, "
        "%d prefix position(s) kept)",
        POS_EMBED,
        source,
        side,
        side,
        rows,
        cols,
        POS_EMBED_INTERPOLATION,
        prefix,
    )
    return record


def _square_side(n: int) -> Optional[int]:
    side = math.isqrt(n) if n > 0 else 0
    return side if side > 0 and side * side == n else None


def state_digest(model: torch.nn.Module, extra: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 over parameter names and bytes (and ``extra`` method tensors): proves that a rebuilt
    model has the same weights."""
    h = hashlib.sha256()
    for name, tensor in sorted({**model.state_dict(), **(extra or {})}.items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
