"""What makes a bundle's measured figures unrepresentative, as short tags for every figure line.

A bundle with random weights, or AdaViT with random (untrained) decision heads, runs and
measures fine, but its accuracy, agreement, cosine, token counts and speed-up say nothing about
the trained model. ``compare``, ``eval``, ``bench``, ``sweep`` and ``show`` append these tags to
each figure they affect, so no such figure is read without them.
"""

from __future__ import annotations

from ..manifest import Manifest

RANDOM_WEIGHTS = "RANDOM weights"
RANDOM_HEADS = "RANDOM decision heads"


def caveats(manifest: Manifest) -> list[str]:
    """Tags for ``manifest``: random weights; random decision heads (``method.warnings``)."""
    tags = []
    if manifest.weights.source == "random":
        tags.append(RANDOM_WEIGHTS)
    for warning in manifest.method.warnings:
        # insert_adavit_gates writes "AdaViT's decision heads are RANDOM (seed ...)" when the
        # checkpoint has none; any other method warning is named as such.
        tag = RANDOM_HEADS if "decision heads are RANDOM" in warning else "method warning in manifest"
        if tag not in tags:
            tags.append(tag)
    return tags


def tagged(line: str, tags: list[str]) -> str:
    """``line`` with ``  [tag, tag]`` appended when there are tags."""
    return f"{line}  [{', '.join(tags)}]" if tags else line
