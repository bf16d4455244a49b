"""Short model names and their timm names."""

from __future__ import annotations

import difflib

from ..errors import TokcompileError

ALIASES: dict[str, str] = {
    "deit_t": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "vit_s16": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
}


def vit_model_names() -> list[str]:
    """timm names whose model class is ``VisionTransformer`` (or a subclass)."""
    import timm

    return sorted(set(timm.list_models(module="vision_transformer") + timm.list_models(module="deit")))


def resolve_model_name(name: str) -> str:
    """``deit_s`` → ``deit_small_patch16_224``; a timm ViT name passes through.

    Raises TokcompileError naming close matches for an unknown name.
    """
    if name in ALIASES:
        return ALIASES[name]

    known = vit_model_names()
    if name in known:
        return name
    candidates = list(ALIASES) + known
    close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise TokcompileError(
        f"unknown model '{name}'{hint} (known aliases: {', '.join(ALIASES)}; "
        "any timm VisionTransformer name works; see 'tokcompile list models')"
    )
