"""Image folders → preprocessed float32 batches (timm's eval transform for the model)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

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


def image_batches(directory: Path | str, timm_name: str, batch: int, limit: int | None = None) -> Iterator[np.ndarray]:
    """Yield [b, 3, H, W] float32 batches; unreadable files are skipped with a warning."""
    import timm
    import timm.data
    from PIL import Image

    files = list_images(directory)[:limit]
    model_cfg = timm.models.get_pretrained_cfg(timm_name)
    config = timm.data.resolve_data_config(model_cfg.to_dict() if model_cfg is not None else {})
    transform = timm.data.create_transform(**config)
    pending: list[np.ndarray] = []
    readable = 0
    for path in files:
        try:
            with Image.open(path) as img:
                pending.append(transform(img.convert("RGB")).numpy())
        except Exception as exc:
            logger.warning("skipping %s: cannot decode (%s)", path, type(exc).__name__)
            continue
        readable += 1
        if len(pending) == batch:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)
    if readable == 0:
        raise TokcompileError(f"--images '{directory}': none of the {len(files)} files could be decoded")
