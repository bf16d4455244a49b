"""Image folders → float32 batches preprocessed at a bundle's input size.

One function decides how an image becomes model input, for every path that feeds images
(calibration, eval, compare, bench, sweep, show): ``preprocessing(timm_name, input_shape)``.
It is timm's eval transform for the model's pretrained configuration (mean, std,
interpolation, crop_pct, crop mode) with the input size replaced by the bundle's own: the
shorter side is resized to ``size / crop_pct`` (aspect ratio kept), then the centre is cropped
to the bundle's H × W. So a DINOv2 ViT-S/14 (pretrained at 518 px, crop_pct 1.0) built at
224 px sees the whole centre square at 224 px, and DeiT (crop_pct 0.875) at 384 px sees a
438 px resize cropped to 384, as timm evaluates it at each size.

Files are taken evenly spread over the sorted list when only some are used (``spread``), so a
class-folder layout contributes every class, not the first few.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import numpy as np

from ..errors import TokcompileError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
EIGHT_BIT, SIXTEEN_BIT = 255, 65535
T = TypeVar("T")


def list_images(directory: Path | str, flag: str = "--images") -> list[Path]:
    """The image files under ``directory`` (recursive), sorted; ``flag`` names the option in errors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TokcompileError(f"{flag} '{directory}' is not a directory; pass a folder of images")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise TokcompileError(
            f"{flag} '{directory}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a folder of images"
        )
    return files


def spread(files: Sequence[T], limit: Optional[int], flag: str = "--limit") -> list[T]:
    """At most ``limit`` of ``files``, evenly spaced over the sorted list (deterministic).

    Sorted class folders (``n014.../``) or WordNet-id file names put one class after another, so
    the first ``limit`` files would cover only the first classes; evenly spaced picks cover them all.
    """
    if limit is None or limit >= len(files):
        return list(files)
    if limit < 1:
        raise TokcompileError(f"{flag} must be a positive integer, got {limit}")
    picks = np.unique(np.linspace(0, len(files) - 1, limit).round().astype(int))
    return [files[i] for i in picks]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one model input: [3, H, W] float32, normalised.

    Made by ``preprocessing``; equal objects preprocess identically.
    """

    size: tuple[int, int]  # H, W: the bundle's input size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str

    @functools.cached_property
    def _transform(self) -> Callable[[Any], Any]:
        import timm.data

        return timm.data.create_transform(
            input_size=(3, *self.size),
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
        )

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image in RGB → [3, H, W] float32."""
        return self._transform(image).numpy()

    def record(self) -> dict[str, Any]:
        """For manifests and reports."""
        return {
            "size": list(self.size),
            "resize_shorter_side_to": int(min(self.size) / self.crop_pct),
            "crop": self.crop_mode,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def describe(self) -> str:
        h, w = self.size
        return (
            f"{h}×{w}: shorter side → {int(min(self.size) / self.crop_pct)} px ({self.interpolation}, "
            f"crop_pct {self.crop_pct:g}), {self.crop_mode} crop, mean {tuple(round(m, 3) for m in self.mean)}, "
            f"std {tuple(round(s, 3) for s in self.std)}"
        )

    def resize(self, images: np.ndarray) -> np.ndarray:
        """Already-normalised inputs [B, 3, h, w] (e.g. random inputs) → [B, 3, H, W], bilinear, antialiased."""
        import torch
        import torch.nn.functional as F

        if tuple(images.shape[-2:]) == self.size:
            return images
        x = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(images)), size=self.size, mode="bilinear", antialias=True
        )
        return x.numpy()


def preprocessing(timm_name: str, input_shape: Sequence[int]) -> Preprocess:
    """THE preprocessing of a bundle: timm's eval transform for ``timm_name`` at ``input_shape``.

    input_shape: the bundle's [3, H, W] (manifest ``model.input_shape``, ``ModelSpec.input_shape``).
    Mean, std, interpolation, crop_pct and crop mode come from the model's pretrained
    configuration in timm (timm's defaults for a name it has none for); the size is always the
    bundle's, never the pretrained one.
    """
    import timm.data
    import timm.models

    pretrained = timm.models.get_pretrained_cfg(timm_name)
    config = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained else {"source": None})
    height, width = (int(v) for v in input_shape[-2:])
    return Preprocess(
        size=(height, width),
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        interpolation=str(config["interpolation"]),
        crop_pct=float(config["crop_pct"]),
        crop_mode=str(config.get("crop_mode") or "center"),
    )


class UnsupportedImage(ValueError):
    """An image that decodes but whose pixel format tokcompile will not guess at."""


def to_rgb(image: Any) -> Any:
    """A decoded PIL image → 8-bit RGB.

    16-bit greyscale (PNG/TIFF ``I;16*``) is scaled from [0, 65535] to [0, 255]: PIL's own
    ``convert("RGB")`` clips it instead, turning a mid-grey photo almost white. 32-bit integer
    images (``I``) are scaled the same way when their values exceed 8 bits; float (``F``) and
    integer images beyond 16 bits raise ``UnsupportedImage``.
    """
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        top = float(values.max()) if values.size else 0.0
        if values.size and float(values.min()) < 0 or top > SIXTEEN_BIT:
            raise UnsupportedImage(f"{mode} image with values outside [0, {SIXTEEN_BIT}]")
        scale = EIGHT_BIT / SIXTEEN_BIT if mode.startswith("I;16") or top > EIGHT_BIT else 1.0
        grey = np.clip(np.rint(values * scale), 0, EIGHT_BIT).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        raise UnsupportedImage("floating-point image (mode F); save it as 8- or 16-bit")
    return image.convert("RGB")


def read_image(path: Path, preprocess: Sequence[Preprocess]) -> list[np.ndarray]:
    """Decode ``path`` once and preprocess it each way: one [3, H, W] float32 per ``preprocess``.

    Raises whatever decoding raises (``UnsupportedImage`` for pixel formats refused above).
    """
    from PIL import Image

    with Image.open(path) as img:
        rgb = to_rgb(img)
    return [p(rgb) for p in preprocess]


@dataclass
class ImageStats:
    """What one pass over image files saw; filled in as the batches are consumed."""

    files: int = 0  # files the pass was given
    decoded: int = 0
    skipped: list[Path] = field(default_factory=list)  # files that failed to decode, in order


def load_batches_multi(
    files: Sequence[Path],
    preprocess: Sequence[Preprocess],
    batch: int,
    stats: Optional[ImageStats] = None,
    source: str = "--images",
) -> Iterator[tuple[list[np.ndarray], list[Path]]]:
    """Yield ([one [b, 3, H, W] float32 array per ``preprocess``], the b files) per batch.

    Each file is decoded once. Unreadable files are skipped with a warning and counted in
    ``stats``; raises TokcompileError after the last file when none of ``files`` decoded.
    """
    stats = stats if stats is not None else ImageStats()
    stats.files += len(files)
    pending: list[list[np.ndarray]] = []
    paths: list[Path] = []
    readable = 0
    for path in files:
        try:
            pending.append(read_image(path, preprocess))
        except Exception as exc:
            detail = f": {exc}" if isinstance(exc, UnsupportedImage) else ""
            logger.warning("skipping %s: cannot decode (%s%s)", path, type(exc).__name__, detail)
            stats.skipped.append(path)
            continue
        readable += 1
        stats.decoded += 1
        paths.append(path)
        if len(pending) == batch:
            yield [np.stack(views) for views in zip(*pending)], paths
            pending, paths = [], []
    if pending:
        yield [np.stack(views) for views in zip(*pending)], paths
    if readable == 0:
        raise TokcompileError(f"{source}: none of the {len(files)} files could be decoded")


def load_batches(
    files: Sequence[Path],
    preprocess: Preprocess,
    batch: int,
    stats: Optional[ImageStats] = None,
    source: str = "--images",
) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """``load_batches_multi`` with one preprocessing: yield ([b, 3, H, W] float32, the b files)."""
    for (images,), paths in load_batches_multi(files, [preprocess], batch, stats, source):
        yield images, paths


def image_batches(
    directory: Path | str,
    preprocess: Preprocess,
    batch: int,
    limit: Optional[int] = None,
    stats: Optional[ImageStats] = None,
    flag: str = "--images",
) -> Iterator[np.ndarray]:
    """Yield [b, 3, H, W] float32 batches of at most ``limit`` images spread over ``directory``."""
    files = spread(list_images(directory, flag), limit)
    for images, _ in load_batches(files, preprocess, batch, stats, source=f"{flag} '{directory}'"):
        yield images
