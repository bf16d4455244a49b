"""``tokcompile eval``: a bundle and its dense twin on the same images.

The dense twin comes from ``runtime.bench.dense_runner`` (same weights, same executed precision,
same export path, method ``none``), so every difference below is the token reduction's. Per
batch both models run back to back, in alternating order (as ``bench`` does), so drift on a
shared machine hits both alike; throughput is images over the summed run time of that model,
decoding and preprocessing excluded, after one untimed warm-up run of each.

Reported: top-1 accuracy of both models where file locations carry ImageNet-1k labels
(``labels.py``), top-1 agreement of the bundle with the dense model, cosine similarity of the
final features (the classifier input, output ``features``), and both throughputs. Files that
fail to decode are skipped with a warning and counted; one bad file never ends a long run.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TokcompileError
from .labels import labels_of, top1_correct

logger = logging.getLogger(__name__)

# Defaults of eval/sweep. They belong in _defaults.py with the others; they live here until that
# file gains an eval section (it is not this module's to edit).
EVAL_BATCH = 16
RANDOM_IMAGES = 32  # images drawn when no folder is given
IMAGENET_CLASSES = 1000

RANDOM_WARNING = (
    "no --images: evaluating on random inputs; agreement and cosine on noise are unrepresentative "
    "of real images, and there is no accuracy. Pass --images DIR for meaningful figures"
)

# A model: float32 images [B, 3, H, W], output names → dict of numpy outputs.
Model = Callable[[np.ndarray, Sequence[str]], dict[str, np.ndarray]]


@dataclass
class Scores:
    """Running totals of one evaluation; ``score_batches`` fills them batch by batch."""

    images: int = 0
    labelled: int = 0
    correct: int = 0
    dense_correct: int = 0
    agree: int = 0
    cosines: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    dense_seconds: float = 0.0


@dataclass
class EvalResult:
    bundle: str
    method: str
    params: dict[str, Any]
    precision: str  # precision ONNX Runtime executed (both models)
    batch: int
    images: int  # images evaluated
    skipped: int  # files skipped because they could not be decoded
    labelled: int  # images whose location names an ImageNet-1k class
    random_inputs: bool
    weights: str  # the bundle's weights source: pretrained, file, random
    top1: Optional[float]  # None without labels
    dense_top1: Optional[float]
    agreement: float  # top-1 agreement with the dense model, in [0, 1]
    cosine_mean: Optional[float]  # features cosine similarity, in [-1, 1]; None without features
    cosine_min: Optional[float]
    images_per_s: float
    dense_images_per_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Measured throughput ratio bundle / dense."""
        return self.images_per_s / self.dense_images_per_s

    def lines(self) -> list[str]:
        skipped = f" (skipped {self.skipped} unreadable file{'s' if self.skipped != 1 else ''})" if self.skipped else ""
        source = "random inputs" if self.random_inputs else "images"
        out = [f"evaluated {self.images} {source}{skipped}, batch {self.batch}, {self.precision} on both models"]
        if self.top1 is not None and self.dense_top1 is not None:
            out.append(
                f"top-1 accuracy: bundle {self.top1:.2%}, dense {self.dense_top1:.2%} "
                f"({self.top1 - self.dense_top1:+.2%}) on {self.labelled} labelled images"
            )
        out.append(f"top-1 agreement with dense: {self.agreement:.2%}")
        if self.cosine_mean is not None:
            out.append(f"features cosine similarity: mean {self.cosine_mean:.4f}, min {self.cosine_min:.4f}")
        out.append(
            f"throughput: bundle {self.images_per_s:.1f} img/s, dense {self.dense_images_per_s:.1f} img/s "
            f"({self.speedup:.2f}x)"
        )
        return out + self.notes


def progress_bar(total: Optional[int], desc: str, progress: Optional[bool], unit: str = "img", leave: bool = True):
    """A tqdm bar on stderr. ``progress``: True/False forces it on/off; None shows it on a terminal only."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=leave,
        disable=None if progress is None else not progress,
    )


def select_files(files: Sequence[Path], limit: Optional[int]) -> list[Path]:
    """At most ``limit`` files, spread evenly over the sorted list (a class-folder layout keeps every class)."""
    if limit is None or limit >= len(files):
        return list(files)
    if limit < 1:
        raise TokcompileError(f"--limit must be a positive integer, got {limit}")
    picks = np.unique(np.linspace(0, len(files) - 1, limit).round().astype(int))
    return [files[i] for i in picks]


def random_batches(shape: tuple[int, ...], count: int, batch: int, seed: int = 0) -> Iterator[tuple[np.ndarray, None]]:
    """``count`` seeded standard-normal images in batches, paired with None (no files, no labels)."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, batch):
        yield rng.standard_normal((min(batch, count - start), *shape), dtype=np.float32), None


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [B, C] arrays in float64; 1.0 where both rows are zero."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos[(na == 0) & (nb == 0)] = 1.0
    return np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0)


def score_batches(
    model: Model,
    dense: Model,
    batches: Iterable[tuple[np.ndarray, Optional[Sequence[Path]]]],
    outputs: Sequence[str] = ("logits", "features"),
    with_labels: bool = True,
    bar: Any = None,
) -> Scores:
    """Run ``model`` and ``dense`` on every batch, interleaved, and total the comparison.

    batches: (images [b, 3, H, W] float32, their files or None); labels come from the files.
    ``outputs`` are requested from both models: ``logits`` always, ``features`` when present.
    """
    scores = Scores()
    warm = False
    for index, (images, files) in enumerate(batches):
        if not warm:  # first ORT runs allocate and pick kernels; keep them out of the timing
            model(images, outputs)
            dense(images, outputs)
            warm = True
        got: dict[str, dict[str, np.ndarray]] = {}
        seconds: dict[str, float] = {}
        for name in ("model", "dense") if index % 2 == 0 else ("dense", "model"):
            fn = model if name == "model" else dense
            start = time.perf_counter()
            got[name] = fn(images, outputs)
            seconds[name] = time.perf_counter() - start
        scores.seconds += seconds["model"]
        scores.dense_seconds += seconds["dense"]
        top, dense_top = got["model"]["logits"].argmax(1), got["dense"]["logits"].argmax(1)
        scores.images += len(images)
        scores.agree += int((top == dense_top).sum())
        if "features" in outputs:
            scores.cosines.append(_cosine(got["model"]["features"], got["dense"]["features"]))
        if with_labels and files is not None:
            labels = labels_of(files)
            correct, labelled = top1_correct(got["model"]["logits"], labels)
            scores.correct += correct
            scores.labelled += labelled
            scores.dense_correct += top1_correct(got["dense"]["logits"], labels)[0]
        if bar is not None:
            bar.update(len(images))
    return scores


def evaluate(
    bundle: Path | str,
    images: Optional[Path | str] = None,
    batch: Optional[int] = None,
    limit: Optional[int] = None,
    dense: Optional[Model] = None,
    progress: Optional[bool] = None,
    threads: Optional[int] = None,
    seed: int = 0,
    warn_random: bool = True,
) -> EvalResult:
    """Evaluate ``bundle`` against its dense twin on an image folder (or random inputs without one).

    ``dense``: a runner from ``runtime.bench.dense_runner`` to reuse (a sweep exports it once);
    by default it is exported from the bundle. ``limit``: at most that many files, spread evenly
    over the folder's sorted files. Raises TokcompileError for a folder without decodable images.
    """
    from ..runtime.bench import dense_runner
    from ..runtime.runner import load
    from .images import ImageStats, list_images, load_batches

    directory = Path(bundle)
    batch = EVAL_BATCH if batch is None else batch
    if batch < 1:
        raise TokcompileError(f"--batch must be a positive integer, got {batch}")
    if limit is not None and limit < 1:
        raise TokcompileError(f"--limit must be a positive integer, got {limit}")
    runner = load(directory, threads)
    manifest = runner.manifest
    stats = ImageStats()
    labelled_model = manifest["model"].get("num_classes") == IMAGENET_CLASSES
    notes: list[str] = []
    if images is None:
        if warn_random:
            logger.warning("%s", RANDOM_WARNING)
        notes.append("note: random inputs, unrepresentative of real images")
        count = limit or RANDOM_IMAGES
        batches: Iterator[Any] = random_batches(tuple(manifest["model"]["input_shape"]), count, batch, seed)
    else:
        files = select_files(list_images(images), limit)
        count = len(files)
        batches = load_batches(files, manifest["model"]["timm_name"], batch, stats, source=f"--images '{images}'")
    # Decode the first batch before exporting the dense twin: a folder where nothing decodes fails fast.
    first = next(batches)
    batches = itertools.chain([first], batches)
    if dense is None:
        logger.info("eval: exporting the dense twin of %s", directory)
        dense = dense_runner(directory, threads)
    # a staged bundle's final outputs differ from its first stage's; older runners lack output_names
    bundle_outputs = getattr(runner, "output_names", None) or manifest["stages"][0]["outputs"]
    names = [n for n in ("logits", "features") if n in bundle_outputs]
    if "features" in names and "features" not in getattr(dense, "output_names", names):
        names.remove("features")

    def model(x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        # runner.run: the bundle as users run it (input checks, every output incl. the token maps)
        return runner.run(x)

    with progress_bar(count, f"eval {directory.name}", progress, leave=False) as bar:
        scores = score_batches(model, dense, batches, names, with_labels=labelled_model, bar=bar)
    if images is not None and not labelled_model:
        notes.append(
            f"note: the model has {manifest['model'].get('num_classes')} classes, not ImageNet-1k's 1000; no accuracy"
        )
    elif images is not None and scores.labelled == 0:
        notes.append(
            "note: no file location names an ImageNet-1k class (DIR/<wnid>/x.JPEG or <wnid>_x.JPEG); no accuracy"
        )
    elif scores.labelled < scores.images:
        notes.append(
            f"note: {scores.images - scores.labelled} images carry no ImageNet-1k label; accuracy over the rest"
        )
    if stats.skipped:
        shown = ", ".join(p.name for p in stats.skipped[:3]) + (", ..." if len(stats.skipped) > 3 else "")
        notes.append(f"skipped {len(stats.skipped)} unreadable file{'s' if len(stats.skipped) != 1 else ''}: {shown}")
    if manifest["weights"].get("source") == "random":
        notes.append("note: the bundle has RANDOM weights; accuracy figures mean nothing")
    cosines = np.concatenate(scores.cosines) if scores.cosines else None
    return EvalResult(
        bundle=str(directory),
        method=manifest["method"]["name"],
        params=dict(manifest["method"]["params"]),
        precision=runner.precision,
        batch=batch,
        images=scores.images,
        skipped=len(stats.skipped),
        labelled=scores.labelled,
        random_inputs=images is None,
        weights=str(manifest["weights"].get("source")),
        top1=scores.correct / scores.labelled if scores.labelled else None,
        dense_top1=scores.dense_correct / scores.labelled if scores.labelled else None,
        agreement=scores.agree / scores.images,
        cosine_mean=float(cosines.mean()) if cosines is not None else None,
        cosine_min=float(cosines.min()) if cosines is not None else None,
        images_per_s=scores.images / scores.seconds,
        dense_images_per_s=scores.images / scores.dense_seconds,
        notes=notes,
    )
