"""Image folders → preprocessed float32 batches (timm's eval transform for the model)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TokcompileError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def list_images(directory: Path | str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise TokcompileError(f"--images '{directory}' is not a directory; pass a folder of images")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise TokcompileError(
            f"--images '{directory}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a folder of images"
        )
    return files


@dataclass
class ImageStats:
    """What one pass over image files saw; filled in as the batches are consumed."""

    files: int = 0
    decoded: int = 0
    skipped: list[Path] = field(default_factory=list)  # files that failed to decode, in order


def eval_transform(timm_name: str) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """timm's eval transform for ``timm_name`` and the data config it was made from (mean, std, size)."""
    import timm
    import timm.data

    model_cfg = timm.models.get_pretrained_cfg(timm_name)
    config = timm.data.resolve_data_config(model_cfg.to_dict() if model_cfg is not None else {})
    return timm.data.create_transform(**config), config


def load_batches(
    files: Sequence[Path], timm_name: str, batch: int, stats: Optional[ImageStats] = None, source: str = "--images"
) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """Yield ([b, 3, H, W] float32, the b files) per batch; unreadable files are skipped with a warning.

    ``stats`` (optional) counts files, decoded images and skipped files as the batches are consumed.
    Raises TokcompileError after the last file when none of ``files`` could be decoded.
    """
    from PIL import Image

    transform, _ = eval_transform(timm_name)
    stats = stats if stats is not None else ImageStats()
    stats.files += len(files)
    pending: list[np.ndarray] = []
    paths: list[Path] = []
    readable = 0
    for path in files:
        try:
            with Image.open(path) as img:
                pending.append(transform(img.convert("RGB")).numpy())
        except Exception as exc:
            logger.warning("skipping %s: cannot decode (%s)", path, type(exc).__name__)
            stats.skipped.append(path)
            continue
        readable += 1
        stats.decoded += 1
        paths.append(path)
        if len(pending) == batch:
            yield np.stack(pending), paths
            pending, paths = [], []
    if pending:
        yield np.stack(pending), paths
    if readable == 0:
        raise TokcompileError(f"{source}: none of the {len(files)} files could be decoded")


def image_batches(
    directory: Path | str, timm_name: str, batch: int, limit: int | None = None, stats: Optional[ImageStats] = None
) -> Iterator[np.ndarray]:
    """Yield [b, 3, H, W] float32 batches; unreadable files are skipped with a warning."""
    files = list_images(directory)[:limit]
    for images, _ in load_batches(files, timm_name, batch, stats, source=f"--images '{directory}'"):
        yield images
