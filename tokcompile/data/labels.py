"""ImageNet-1k labels from file locations, and top-1 scoring.

Two layouts carry a label (the first that matches wins):

* ``DIR/<wnid>/<anything>.JPEG``: the ImageNet train/val folder layout (the parent folder is a
  WordNet id);
* ``<wnid>_<anything>.JPEG``: a file name that starts with a WordNet id, as in
  ``n01440764_tench.JPEG`` (imagenet-sample) or ``n01440764_10026.JPEG`` (ImageNet train).

A WordNet id maps to the class index timm classifiers use: its position among the 1000 sorted
ImageNet-1k ids. timm ships that list (``timm/data/_info/imagenet_synsets.txt``, read through
``timm.data.ImageNetInfo``); it is checked to be 1000 sorted ids before use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import TokcompileError

WNID = re.compile(r"n\d{8}")
_FILE_WNID = re.compile(r"^(n\d{8})(?:_|$)")
UNLABELLED = -1


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in sorted order (index = timm class index)."""
    from timm.data import ImageNetInfo

    wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids) or not all(WNID.fullmatch(w) for w in wnids):
        raise TokcompileError(
            "timm's ImageNet-1k synset list is not 1000 sorted WordNet ids; cannot map file names to labels"
        )
    return wnids


@functools.lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def wnid_of(path: Path | str) -> Optional[str]:
    """The WordNet id a file's location names (parent folder first, then file-name prefix), or None."""
    path = Path(path)
    if WNID.fullmatch(path.parent.name):
        return path.parent.name
    match = _FILE_WNID.match(path.stem)
    return match.group(1) if match else None


def label_of(path: Path | str) -> int:
    """ImageNet-1k class index for ``path``; ``UNLABELLED`` (-1) when its location names no 1k class."""
    wnid = wnid_of(path)
    return _wnid_index().get(wnid, UNLABELLED) if wnid is not None else UNLABELLED


def labels_of(paths: Sequence[Path | str]) -> np.ndarray:
    """[len(paths)] int64 class indices, ``UNLABELLED`` where a file carries no ImageNet-1k label."""
    return np.array([label_of(p) for p in paths], dtype=np.int64)


def top1_correct(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """logits: [B, classes]; labels: [B] (-1 = unlabelled) → (correct, labelled) over labelled rows."""
    labels = np.asarray(labels)
    mask = labels >= 0
    if not mask.any():
        return 0, 0
    predicted = np.asarray(logits)[mask].argmax(axis=1)
    return int((predicted == labels[mask]).sum()), int(mask.sum())


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Top-1 accuracy over the labelled rows; None when no row has a label."""
    correct, labelled = top1_correct(logits, labels)
    return correct / labelled if labelled else None
