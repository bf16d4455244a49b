"""``tokcompile eval``: a bundle and its dense twin on the same images.

The dense twin comes from ``runtime.bench.dense_runner`` (same weights, same export path, method
``none``). Quality is measured against the fp32 dense model for reduced-precision bundles
(``--reference fp32``, the default there: what the deployed fp16 bundle loses against the model
the user trained) or against the dense model at the bundle's executed precision (``--reference
same``: only the token reduction's effect); throughput always against the dense model at the
bundle's executed precision, so the speed-up isolates token reduction. Per
batch the models run back to back, in rotating order (as ``bench`` alternates), so drift on a
shared machine hits all alike; throughput is images over the summed run time of that model,
decoding and preprocessing excluded, after one untimed warm-up run of each. A sweep evaluates
all its bundles in one such pass (``evaluate_bundles``): one dense run per batch, comparable
timings across points.

Reported: top-1 accuracy of both models where file locations carry ImageNet-1k labels
(``data/labels.py``), top-1 agreement of the bundle with the dense model (classifiers only: none
for a 0-class model), cosine similarity of the final features (the classifier input, output
``features``; the output itself for a model without a head): mean, 5th percentile and minimum,
and both throughputs. Images are preprocessed at each bundle's input size
(``data.images.preprocessing``). Random weights and random decision heads tag every figure.
Files that fail to decode are skipped with a warning and counted; one bad file never ends a long
run. ``evaluate_bundles`` also takes ``baselines``: dense bundles at other input sizes (the
sweep's lower-resolution series), each fed the same photos preprocessed at its own size.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import _defaults
from ..data.labels import labels_of, top1_correct
from ..errors import TokcompileError
from ..passes.names import FEATURES, LOGITS
from ..runtime.caveats import RANDOM_HEADS as RANDOM_HEADS_TAG
from ..runtime.caveats import RANDOM_WEIGHTS as RANDOM_WEIGHTS_TAG
from ..runtime.caveats import caveats, tagged

logger = logging.getLogger(__name__)

EVAL_BATCH = _defaults.EVAL_BATCH
RANDOM_IMAGES = _defaults.EVAL_RANDOM_IMAGES  # images drawn when no folder is given
IMAGENET_CLASSES = 1000
DENSE = "dense"  # the reference model's key in score_batches
TIMING = "dense-timing"  # the dense model at the bundle's precision, when the reference is another
REFERENCES = ("fp32", "same")

RANDOM_WARNING = (
    "no --images: evaluating on random inputs; agreement and cosine on noise are unrepresentative "
    "of real images, and there is no accuracy. Pass --images DIR for meaningful figures"
)

# A model: float32 images [B, 3, H, W], output names → dict of numpy outputs.
Model = Callable[[np.ndarray, Sequence[str]], dict[str, np.ndarray]]


@dataclass
class Scores:
    """Running totals of one model in an evaluation; ``score_batches`` fills them batch by batch."""

    images: int = 0
    labelled: int = 0
    correct: int = 0
    agree: int = 0  # top-1 equal to the reference model's
    cosines: list[np.ndarray] = field(default_factory=list)  # per batch, vs the reference's features
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


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
    agreement: Optional[float]  # top-1 agreement with the dense model, in [0, 1]; None without classes
    cosine_mean: Optional[float]  # features cosine similarity, in [-1, 1]
    cosine_min: Optional[float]
    images_per_s: float
    dense_images_per_s: float
    cosine_p5: Optional[float] = None  # 5th percentile over images
    reference_precision: Optional[str] = None  # the quality reference's precision (None: the bundle's)
    input_size: Optional[tuple[int, int]] = None
    caveats: list[str] = field(default_factory=list)  # runtime.caveats tags for every figure
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Measured throughput ratio bundle / dense."""
        return self.images_per_s / self.dense_images_per_s

    def lines(self) -> list[str]:
        skipped = f" (skipped {self.skipped} unreadable file{'s' if self.skipped != 1 else ''})" if self.skipped else ""
        source = "random inputs" if self.random_inputs else "images"
        reference = self.reference_precision or self.precision
        out = [
            f"evaluated {self.images} {source}{skipped}, batch {self.batch}: bundle {self.precision}, "
            f"reference dense model {reference}"
        ]
        tags = self.caveats
        if self.top1 is not None and self.dense_top1 is not None:
            out.append(
                tagged(
                    f"top-1 accuracy: bundle {self.top1:.2%}, dense {self.dense_top1:.2%} "
                    f"({self.top1 - self.dense_top1:+.2%}) on {self.labelled} labelled images",
                    tags,
                )
            )
        if self.agreement is not None:
            out.append(tagged(f"top-1 agreement with dense: {self.agreement:.2%}", tags))
        if self.cosine_mean is not None:
            out.append(
                tagged(
                    f"features cosine similarity: mean {self.cosine_mean:.4f}, p5 {self.cosine_p5:.4f}, "
                    f"min {self.cosine_min:.4f}",
                    tags,
                )
            )
        out.append(
            tagged(
                f"throughput: bundle {self.images_per_s:.1f} img/s, dense {self.dense_images_per_s:.1f} img/s "
                f"({self.speedup:.2f}x, both {self.precision})",
                tags,
            )
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


def bars_and_logs(progress: Optional[bool]) -> contextlib.AbstractContextManager[Any]:
    """While bars are shown, route tokcompile's log lines through tqdm so they do not tear the bars."""
    if not (progress if progress is not None else sys.stderr.isatty()):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger("tokcompile")])


def random_batches(shape: tuple[int, ...], count: int, batch: int, seed: int = 0) -> Iterator[tuple[np.ndarray, None]]:
    """``count`` seeded standard-normal images in batches, paired with None (no files, no labels)."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, batch):
        yield rng.standard_normal((min(batch, count - start), *shape), dtype=np.float32), None


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [B, C] arrays in float64; 1.0 where both rows are zero."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos[(na == 0) & (nb == 0)] = 1.0
    return np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0)


def score_batches(
    models: Mapping[str, Model],
    batches: Iterable[tuple[Any, Optional[Sequence[Path]]]],
    reference: str = "dense",
    outputs: Sequence[str] = (LOGITS, FEATURES),
    with_labels: bool = True,
    bar: Any = None,
    views: Optional[Mapping[str, int]] = None,
    cosine_output: Optional[str] = FEATURES,
) -> dict[str, Scores]:
    """Run every model on every batch, back to back, and total each against ``models[reference]``.

    batches: (images [b, 3, H, W] float32, their files or None); labels come from the files.
    With ``views`` (model name → index), a batch's images are a list of arrays, the same images
    preprocessed at several input sizes, and each model gets its own (models not named: index 0).
    ``outputs`` are requested from every model: ``logits`` always, ``features`` when present;
    the cosine to the reference is taken on ``cosine_output`` when it is among them.
    The running order rotates by one model per batch, so no model always runs first or last and
    drift on a shared machine hits all alike; the first batch also runs once untimed per model
    (ONNX Runtime allocates and picks kernels on its first runs).
    """
    names = list(models)
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not among the models {names}")

    def view(images: Any, name: str) -> np.ndarray:
        return images if views is None else images[views.get(name, 0)]

    scores = {name: Scores() for name in names}
    for index, (images, files) in enumerate(batches):
        if index == 0:
            for name, fn in models.items():
                fn(view(images, name), outputs)
        got: dict[str, dict[str, np.ndarray]] = {}
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            got[name] = models[name](view(images, name), outputs)
            scores[name].seconds += time.perf_counter() - start
        count = len(view(images, reference))
        labels = labels_of(files) if with_labels and files is not None else None
        ref = got[reference]
        ref_top = ref[LOGITS].argmax(1)
        for name, out in got.items():
            score = scores[name]
            score.images += count
            score.agree += int((out[LOGITS].argmax(1) == ref_top).sum())
            if cosine_output is not None and cosine_output in outputs:
                score.cosines.append(cosine(out[cosine_output], ref[cosine_output]))
            if labels is not None:
                correct, labelled = top1_correct(out[LOGITS], labels)
                score.correct += correct
                score.labelled += labelled
        if bar is not None:
            bar.update(count)
    return scores


def check_batch(batch: int) -> None:
    """--batch within [1, MAX_BATCH]; one line otherwise."""
    if not 1 <= batch <= _defaults.MAX_BATCH:
        raise TokcompileError(f"--batch must be between 1 and {_defaults.MAX_BATCH}, got {batch}")


def resolve_reference(reference: Optional[str], built: str, executed: str) -> tuple[str, str]:
    """``--reference`` and the precision of the dense model it names.

    ``reference`` None: "fp32" for a bundle ``built`` at reduced precision, else "same". "same"
    is the precision the bundle ``executed`` here."""
    if reference is None:
        reference = _defaults.COMPARE_REFERENCE if built != "fp32" else "same"
    if reference not in REFERENCES:
        raise TokcompileError(f"--reference must be one of {', '.join(REFERENCES)}, got '{reference}'")
    return reference, "fp32" if reference == "fp32" else executed


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
    reference: Optional[str] = None,
    weights: Optional[str] = None,
) -> EvalResult:
    """Evaluate ``bundle`` against its dense twin on an image folder (or random inputs without one).

    ``dense``: a runner from ``runtime.bench.dense_runner`` at the reference's precision to reuse;
    by default it is exported from the bundle. ``limit``: at most that many files, spread evenly
    over the folder's sorted files. ``reference``: "fp32" (default for reduced-precision bundles)
    or "same"; ``weights``: a checkpoint path replacing the manifest's. Raises TokcompileError for
    a folder without decodable images.
    """
    return evaluate_bundles(
        [bundle], images, batch, limit, dense, progress, threads, seed, warn_random, reference, weights
    )[0]


def evaluate_bundles(
    bundles: Sequence[Path | str],
    images: Optional[Path | str] = None,
    batch: Optional[int] = None,
    limit: Optional[int] = None,
    dense: Optional[Model] = None,
    progress: Optional[bool] = None,
    threads: Optional[int] = None,
    seed: int = 0,
    warn_random: bool = True,
    reference: Optional[str] = None,
    weights: Optional[str] = None,
    baselines: Sequence[Path | str] = (),
) -> list[EvalResult]:
    """``evaluate`` for bundles that share one dense twin (same model, weights and executed precision).

    All of them run on each batch together with one dense run (``score_batches``), so every
    throughput is measured under the same conditions and each image is decoded once. The dense
    twin is exported from the first bundle unless ``dense`` is given. ``baselines``: dense bundles
    of the same model at other input sizes (their results follow the bundles'), each fed the
    images preprocessed at its own size and scored against the same reference. All runners are
    loaded at once: memory grows with the number of bundles.
    """
    from ..data.images import ImageStats, list_images, load_batches_multi, preprocessing, spread
    from ..runtime.bench import dense_runner
    from ..runtime.runner import load

    if not bundles:
        raise ValueError("evaluate_bundles needs at least one bundle")
    directories = [Path(b) for b in bundles] + [Path(b) for b in baselines]
    batch = EVAL_BATCH if batch is None else batch
    check_batch(batch)
    if limit is not None and limit < 1:
        raise TokcompileError(f"--limit must be a positive integer, got {limit}")
    runners = [load(d, threads) for d in directories]
    first = runners[0].manifest
    for i, (d, r) in enumerate(zip(directories[1:], runners[1:]), start=1):
        m = r.manifest
        same = [m.model.timm_name == first.model.timm_name, r.precision == runners[0].precision]
        if i < len(bundles):
            same.append(m.weights.digest == first.weights.digest)
        if not all(same):
            raise TokcompileError(
                f"bundle '{d}' has another model, weights or precision than '{directories[0]}'; "
                "bundles evaluated together share one dense model"
            )
    precision = runners[0].precision
    reference, reference_precision = resolve_reference(reference, first.precision, precision)
    stats = ImageStats()
    labelled_model = first.model.num_classes == IMAGENET_CLASSES
    classes = first.model.num_classes
    timm_name = first.model.timm_name
    sizes = list(dict.fromkeys(tuple(r.input_shape) for r in runners))  # the bundles' size first
    views = {str(i): sizes.index(tuple(r.input_shape)) for i, r in enumerate(runners)}
    preprocess = [preprocessing(timm_name, shape) for shape in sizes]
    if images is None:
        if warn_random:
            logger.warning("%s", RANDOM_WARNING)
        count = limit or RANDOM_IMAGES
        noise = random_batches(sizes[0], count, batch, seed)
        batches: Iterator[Any] = (([x] + [p.resize(x) for p in preprocess[1:]], None) for x, _ in noise)
    else:
        files = spread(list_images(images), limit)
        count = len(files)
        batches = load_batches_multi(files, preprocess, batch, stats, source=f"--images '{images}'")
    # Decode the first batch before exporting the dense twin: a folder where nothing decodes fails fast.
    head = next(batches)
    batches = itertools.chain([head], batches)
    if dense is None:
        logger.info("eval: exporting the dense twin of %s (%s)", directories[0], reference_precision)
        dense = dense_runner(directories[0], threads, precision=reference_precision, weights=weights)
    models: dict[str, Model] = {DENSE: dense}
    if reference_precision != precision:
        logger.info("eval: exporting the dense twin at %s for the throughput comparison", precision)
        models[TIMING] = dense_runner(directories[0], threads, precision=precision, weights=weights)
    # output_names: what each runner returns (a staged bundle: its last stage's, not its first's)
    every: list[Any] = [*runners, *models.values()]
    outputs = [LOGITS, FEATURES] if all(FEATURES in model.output_names for model in every) else [LOGITS]

    def bundle_model(runner: Any) -> Model:
        # runner.run: the bundle as users run it (input checks, every output incl. the token maps)
        return lambda x, _names: runner.run(x)

    models.update({str(i): bundle_model(r) for i, r in enumerate(runners)})
    desc = f"eval {directories[0].name}" if len(runners) == 1 else f"eval {len(runners)} bundles"
    with bars_and_logs(progress), progress_bar(count, desc, progress, leave=False) as bar:
        scores = score_batches(
            models,
            batches,
            DENSE,
            outputs,
            with_labels=labelled_model,
            bar=bar,
            views=views,
            cosine_output=FEATURES if FEATURES in outputs else None if classes else LOGITS,
        )
    timing = scores.get(TIMING, scores[DENSE])
    return [
        _result(
            d,
            r,
            scores[str(i)],
            scores[DENSE],
            timing,
            reference_precision,
            classes,
            batch,
            stats,
            images,
            labelled_model,
        )
        for i, (d, r) in enumerate(zip(directories, runners))
    ]


def _result(
    directory: Path,
    runner: Any,
    score: Scores,
    ref: Scores,
    timing: Scores,
    reference_precision: str,
    classes: int,
    batch: int,
    stats: Any,
    images: Optional[Path | str],
    labelled_model: bool,
) -> EvalResult:
    manifest = runner.manifest
    notes: list[str] = []
    if images is None:
        notes.append("note: random inputs, unrepresentative of real images")
    elif not classes:
        notes.append(
            "note: the model has no classifier (0 classes): no accuracy or top-1 agreement; its output is compared"
        )
    elif not labelled_model:
        notes.append(f"note: the model has {classes} classes, not ImageNet-1k's 1000; no accuracy")
    elif score.labelled == 0:
        notes.append(
            "note: no file location names an ImageNet-1k class (DIR/<wnid>/x.JPEG or <wnid>_x.JPEG); no accuracy"
        )
    elif score.labelled < score.images:
        notes.append(f"note: {score.images - score.labelled} images carry no ImageNet-1k label; accuracy over the rest")
    if stats.skipped:
        shown = ", ".join(p.name for p in stats.skipped[:3]) + (", ..." if len(stats.skipped) > 3 else "")
        notes.append(f"unreadable files skipped: {shown}")
    tags = caveats(manifest)
    if RANDOM_WEIGHTS_TAG in tags:
        notes.append("note: the bundle has RANDOM weights; accuracy, agreement and cosine mean nothing")
    if RANDOM_HEADS_TAG in tags:
        notes.append(
            "note: the bundle's decision heads are RANDOM (no trained heads in the checkpoint): its token counts, "
            "speed-up and output say nothing about the trained method"
        )
    cosines = np.concatenate(score.cosines) if score.cosines else None
    return EvalResult(
        bundle=str(directory),
        method=manifest.method.name,
        params=dict(manifest.method.params),
        precision=runner.precision,
        batch=batch,
        images=score.images,
        skipped=len(stats.skipped),
        labelled=score.labelled,
        random_inputs=images is None,
        weights=manifest.weights.source,
        top1=score.correct / score.labelled if score.labelled else None,
        dense_top1=ref.correct / ref.labelled if ref.labelled else None,
        agreement=score.agree / score.images if classes else None,
        cosine_mean=float(cosines.mean()) if cosines is not None else None,
        cosine_min=float(cosines.min()) if cosines is not None else None,
        images_per_s=score.images_per_s,
        dense_images_per_s=timing.images_per_s,
        cosine_p5=float(np.percentile(cosines, 5)) if cosines is not None else None,
        reference_precision=reference_precision,
        input_size=tuple(runner.input_shape[1:]),
        caveats=tags,
        notes=notes,
    )
