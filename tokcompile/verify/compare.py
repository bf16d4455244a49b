"""``tokcompile compare``: the bundle against the eager PyTorch model it was built from.

Polygraphy does the running and the numeric check: a ``TorchRunner`` (eager GraphModule on
the CPU; Polygraphy's own PytRunner needs CUDA) and an ``OnnxrtRunner`` over the file the
bundle's ONNX Runtime backend executes, or, for a staged bundle or one whose engines run here
(TensorRT, TensorRT for RTX), a runner over the bundle as ``tokcompile.load`` runs it, driven by
``Comparator.run``.

The reference (``--reference``) is the fp32 eager model by default for reduced-precision
bundles, answering what a deployer asks: how often does fp16 change a token selection relative
to fp32, and what does that do to the output. ``same`` compares with the eager model at the
precision the bundle executes, isolating the runtime.

The verdict has two checks, each with its own threshold, and names the one that failed:

* **selection**: per reduction layer, the share of images whose kept tokens are identical on
  both sides must reach ``--min-agreement``. Merging methods (ToMe) report ``merge_map_<block>``
  outputs as partitions of the original tokens: a layer agrees on an image when both sides
  grouped the original tokens identically, whatever labels the groups carry.
* **logits**: Polygraphy's ``Comparator.compare_accuracy`` with ``--atol`` on the images whose
  selections agree in every layer: the arithmetic, separated from the flips.

Reported besides: the output effect (cosine of ``features``, or of the output for a model
without a head) over all images and over the images where each layer flipped, and top-1
agreement for classifiers (none for a 0-class model). Random weights and random decision heads
tag every figure (``runtime.caveats``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from polygraphy.backend.base import BaseRunner

from .. import _defaults
from ..backends import REFERENCE, get_backend
from ..errors import TokcompileError
from ..passes.graph_outputs import named_outputs
from ..passes.names import COUNT, FEATURES, LOGITS, MERGE_MAP, SELECTION_KINDS, is_kind
from ..runtime.bundle import read_manifest
from ..runtime.caveats import caveats, tagged
from .evaluate import bars_and_logs, check_batch, cosine, progress_bar, random_batches, resolve_reference

logger = logging.getLogger(__name__)


class StagedBundleRunner(BaseRunner):
    """Polygraphy runner over a bundle as ``tokcompile.load`` runs it (stage files + bucket dispatch)."""

    def __init__(
        self, directory: Path, input_name: str, input_shape: tuple[int, ...], backend: str = "onnxruntime"
    ) -> None:
        super().__init__(name=f"{backend}-staged", prefix=f"{backend}-staged")
        self.directory, self.input_name, self.input_shape = directory, input_name, input_shape
        self.backend = backend

    def activate_impl(self):
        from ..runtime.runner import load

        self.runner = load(self.directory, backend=self.backend)

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata

        return TensorMetadata().add(self.input_name, np.float32, shape=(-1, *self.input_shape))

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outputs = self.runner.run(feed_dict[self.input_name])
        self.inference_time = time.perf_counter() - start
        return OrderedDict(outputs)

    def deactivate_impl(self):
        del self.runner


class TorchRunner(BaseRunner):
    """Polygraphy runner for an eager torch module on the CPU."""

    def __init__(self, module: Any, input_name: str, input_shape: tuple[int, ...], output_names: list[str]) -> None:
        super().__init__(name="pytorch-eager", prefix="pytorch")
        self.module, self.input_name, self.input_shape, self.output_names = (
            module,
            input_name,
            input_shape,
            output_names,
        )

    def get_input_metadata_impl(self):
        from polygraphy.common import TensorMetadata

        return TensorMetadata().add(self.input_name, np.float32, shape=(-1, *self.input_shape))

    def infer_impl(self, feed_dict):
        import torch

        start = time.perf_counter()
        with torch.no_grad():
            outputs = self.module(torch.from_numpy(np.ascontiguousarray(feed_dict[self.input_name])))
        self.inference_time = time.perf_counter() - start
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return OrderedDict(
            (n, o.detach().float().numpy() if o.is_floating_point() else o.numpy())
            for n, o in zip(self.output_names, outputs)
        )


@dataclass
class CompareReport:
    precision: str  # precision the bundle executes here
    reference: str  # "fp32" or "same"
    reference_precision: str  # precision of the eager reference
    atol: float
    min_agreement: float
    images: int
    max_abs: float  # logits, all images
    mean_abs: float
    polygraphy_passed: Optional[bool]  # Polygraphy's atol check on the agreeing images; None: none agree
    agreeing: int = 0  # images whose selections are identical in every layer
    max_abs_agreeing: Optional[float] = None  # logits, agreeing images only
    top1_agreement: Optional[float] = None  # None for a model without classes
    output: str = LOGITS  # what the cosine is measured on: FEATURES or the model output
    cosine_mean: float = 1.0
    cosine_p5: float = 1.0
    cosine_min: float = 1.0
    # per reduction layer: fraction of images whose kept token sets are identical
    layer_agreement: dict[str, float] = field(default_factory=dict)
    # per reduction layer: mean over images of |kept_ref ∩ kept_bundle| / |kept_ref|; for a merge
    # map, the share of original tokens whose group has the same members on both sides
    layer_overlap: dict[str, float] = field(default_factory=dict)
    # per reduction layer with flips: mean output cosine over the images where it flipped
    layer_flip_cosine: dict[str, float] = field(default_factory=dict)
    caveats: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """One line per failed check: what failed, by how much, and what to try."""
        out = []
        for name, rate in self.layer_agreement.items():
            if rate < self.min_agreement:
                effect = self.layer_flip_cosine.get(name)
                out.append(
                    f"selection check: {name} identical on {rate:.1%} of images < --min-agreement "
                    f"{self.min_agreement:.0%}"
                    + (f" (output cosine on the flipped images {effect:.4f})" if effect is not None else "")
                    + "; try --reference same to tell the runtime's flips from the precision's, a higher "
                    "--precision, or a lower --min-agreement if that output effect is acceptable"
                )
        if self.polygraphy_passed is False:
            out.append(
                f"logits check: max |Δ| {self.max_abs_agreeing:.3g} > --atol {self.atol:g} on the {self.agreeing} "
                "images whose selections agree; the arithmetic differs beyond tolerance: try a higher --precision, "
                "a larger --atol, or -v for Polygraphy's per-output report"
            )
        elif self.polygraphy_passed is None and self.layer_agreement:
            out.append(
                "logits check: no image kept identical tokens in every layer, so the arithmetic cannot be "
                "checked apart from the flips; try --reference same or more images (--samples, --images)"
            )
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def lines(self) -> list[str]:
        reference = f"{self.reference_precision} PyTorch (--reference {self.reference})"
        tags = self.caveats
        out = [f"compared {self.images} images: the bundle ({self.precision}) vs {reference}"]
        if self.polygraphy_passed is not None:
            verdict = "within" if self.polygraphy_passed else "OUTSIDE"
            out.append(
                f"logits on the {self.agreeing} images with identical selections: max |Δ| "
                f"{self.max_abs_agreeing:.3g}, {verdict} --atol {self.atol:g}"
            )
        top1 = f"; top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        out.append(
            tagged(f"logits on all images: max |Δ| {self.max_abs:.3g}, mean |Δ| {self.mean_abs:.3g}{top1}", tags)
        )
        out.append(
            tagged(
                f"output effect ({self.output} cosine to the reference): mean {self.cosine_mean:.4f}, "
                f"p5 {self.cosine_p5:.4f}, min {self.cosine_min:.4f}",
                tags,
            )
        )
        for name, rate in self.layer_agreement.items():
            what = (
                "token groupings"
                if is_kind(name, MERGE_MAP)
                else "token counts"
                if is_kind(name, COUNT)
                else "kept-token sets"
            )
            line = f"{name}: identical {what} for {rate:.1%} of images"
            if rate < 1.0:
                line += f" (mean overlap {self.layer_overlap[name]:.2%})  ← selection flips"
                if name in self.layer_flip_cosine:
                    line += f"; output cosine on those images {self.layer_flip_cosine[name]:.4f}"
            out.append(tagged(line, tags))
        checks = f"selection ≥ {self.min_agreement:.0%} per layer (--min-agreement), logits within --atol"
        out.append(f"checks: {checks}")
        out += [f"FAILED {f}" for f in self.failures()]
        return out + self.notes


def _canonical_groups(labels: np.ndarray) -> np.ndarray:
    """Group labels renumbered 0, 1, ... by first occurrence: equal iff the partitions are equal."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    renumber = np.empty_like(first)
    renumber[np.argsort(first)] = np.arange(first.size)
    return renumber[inverse.reshape(-1)]


def _same_group_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of tokens whose group (set of co-members) is the same under labelings a and b."""
    return float(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all(axis=1).mean())


@contextlib.contextmanager
def _polygraphy_logging() -> Iterator[None]:
    """Polygraphy's own lines (per-output histograms, [E] FAILED lines) only with -v; no colour probe."""
    from polygraphy.logger import G_LOGGER

    verbose = logging.getLogger("tokcompile").isEnabledFor(logging.DEBUG)
    colors = G_LOGGER.colors
    G_LOGGER.colors = False  # else its first line warns that the 'colored' module is not installed
    try:
        with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL):
            yield
    finally:
        G_LOGGER.colors = colors


def _count_inferences(runner: Any, bar: Any) -> Any:
    """Advance ``bar`` by the batch size after each of ``runner``'s inferences (Polygraphy calls
    ``infer`` on the runner it activated, so an instance attribute wraps it)."""
    infer = runner.infer

    def counted(feed_dict: Any, *args: Any, **kwargs: Any) -> Any:
        outputs = infer(feed_dict, *args, **kwargs)
        bar.update(len(next(iter(feed_dict.values()))))
        return outputs

    runner.infer = counted
    return runner


def _rows(results: Any, keep: np.ndarray, name: str) -> Any:
    """``results`` (Polygraphy RunResults) cut to output ``name`` and the images where ``keep``."""
    from polygraphy.comparator import IterationResult, RunResults

    out = RunResults()
    for runner_name, iterations in results.items():
        kept, start = [], 0
        for it in iterations:
            rows = keep[start : start + len(it[name])]
            start += len(rows)
            if rows.any():
                kept.append(IterationResult({name: it[name][rows]}, it.runtime, runner_name))
        out.append((runner_name, kept))
    return out


def _check_options(batch: int, samples: Optional[int], atol: Optional[float], min_agreement: Optional[float]) -> None:
    check_batch(batch)
    if samples is not None and samples < 1:
        raise TokcompileError(f"--samples must be a positive integer, got {samples}")
    if atol is not None and not (math.isfinite(atol) and atol >= 0):
        raise TokcompileError(f"--atol must be a finite number ≥ 0, got {atol}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise TokcompileError(f"--min-agreement must be in [0, 1], got {min_agreement}")


def compare(
    bundle: Path | str,
    images: Optional[Path | str] = None,
    batch: Optional[int] = None,
    samples: Optional[int] = None,
    atol: Optional[float] = None,
    seed: int = 0,
    reference: Optional[str] = None,
    min_agreement: Optional[float] = None,
    weights: Optional[str] = None,
    progress: Optional[bool] = None,
) -> CompareReport:
    """Run the bundle and its PyTorch reference on the same inputs and report agreement.

    ``reference``: "fp32" (default for reduced-precision bundles) or "same"; ``min_agreement``
    and ``atol`` default per executed precision (``_defaults``); ``weights``: a checkpoint path
    replacing the manifest's; ``samples``: batches (default 2 random, all images of a folder).
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.comparator import compare as polygraphy_compare

    from ..data.images import image_batches, preprocessing
    from ..runtime.reference import rebuild

    batch = _defaults.COMPARE_BATCH if batch is None else batch
    _check_options(batch, samples, atol, min_agreement)
    directory = Path(bundle)
    manifest = read_manifest(directory)
    stage = manifest.stages[0]
    # A bundle runs its engines where its backend runs here, its ONNX files (ONNX Runtime) elsewhere.
    built = get_backend(manifest.backend)
    unavailable = built.unavailable(manifest)
    backend = built if unavailable is None else get_backend(REFERENCE)
    precision = stage.onnxruntime_precision if backend.name == REFERENCE else manifest.precision
    reference, reference_precision = resolve_reference(reference, manifest.precision, precision)
    atol = atol if atol is not None else _defaults.COMPARE_ATOL[precision]
    min_agreement = min_agreement if min_agreement is not None else _defaults.COMPARE_MIN_AGREEMENT[precision]
    gm, spec, info = rebuild(manifest, precision=reference_precision, weights=weights)
    model = manifest.model
    shape = tuple(model.input_shape)
    if images is not None:
        preprocess = preprocessing(model.timm_name, shape)
        data = list(image_batches(images, preprocess, batch, limit=samples * batch if samples else None))
    else:
        count = (samples or _defaults.COMPARE_SAMPLES) * batch
        data = [x for x, _ in random_batches(shape, count, batch, seed)]
    input_name = stage.inputs[0]
    feeds = [OrderedDict([(input_name, x)]) for x in data]
    outputs = info.get("outputs") or named_outputs(gm)
    if len(manifest.stages) == 1 and backend.name == REFERENCE:
        onnx_path = directory / stage.onnxruntime_file
        bundle_runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name="onnxruntime")
    else:
        bundle_runner = StagedBundleRunner(directory, input_name, shape, backend.name)
    count = sum(len(x) for x in data)
    with bars_and_logs(progress), progress_bar(2 * count, f"compare {directory.name}", progress, leave=False) as bar:
        runners = [_count_inferences(r, bar) for r in (TorchRunner(gm, input_name, shape, outputs), bundle_runner)]
        with _polygraphy_logging():
            results = Comparator.run(runners, data_loader=feeds)
    ref_iters, got_iters = list(results.values())
    # per image, since token-dimension outputs of a staged bundle are as wide as each batch's bucket
    ref = {n: [row for it in ref_iters for row in it[n]] for n in outputs}
    got = {n: [row for it in got_iters for row in it[n]] for n in outputs}
    ref_logits, got_logits = np.stack(ref[LOGITS]), np.stack(got[LOGITS])
    diff = np.abs(ref_logits.astype(np.float64) - got_logits.astype(np.float64))
    effect = FEATURES if FEATURES in outputs else LOGITS
    cos = cosine(np.stack(got[effect]), np.stack(ref[effect]))
    classes = model.num_classes
    report = CompareReport(
        precision=precision,
        reference=reference,
        reference_precision=reference_precision,
        atol=atol,
        min_agreement=min_agreement,
        images=int(ref_logits.shape[0]),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        polygraphy_passed=None,
        top1_agreement=float((ref_logits.argmax(1) == got_logits.argmax(1)).mean()) if classes else None,
        output=effect if classes else "output",
        cosine_mean=float(cos.mean()),
        cosine_p5=float(np.percentile(cos, 5)),
        cosine_min=float(cos.min()),
        caveats=caveats(manifest),
    )
    identical: dict[str, np.ndarray] = {}
    for name in (n for n in outputs if is_kind(n, *SELECTION_KINDS)):
        # -1 marks padding (and EViT's fused token): only real tokens are compared
        pairs = [
            (set(np.atleast_1d(a).tolist()) - {-1}, set(np.atleast_1d(b).tolist()) - {-1})
            for a, b in zip(ref[name], got[name])
        ]
        identical[name] = np.array([a == b for a, b in pairs])
        report.layer_overlap[name] = float(np.mean([len(a & b) / max(1, len(a)) for a, b in pairs]))
    for name in (n for n in outputs if is_kind(n, MERGE_MAP)):
        groups = [(_canonical_groups(a), _canonical_groups(b)) for a, b in zip(ref[name], got[name])]
        identical[name] = np.array([np.array_equal(a, b) for a, b in groups])
        report.layer_overlap[name] = float(np.mean([_same_group_share(a, b) for a, b in groups]))
    for name, same in identical.items():
        report.layer_agreement[name] = float(same.mean())
        if not same.all():
            report.layer_flip_cosine[name] = float(cos[~same].mean())
    agreeing = np.logical_and.reduce(list(identical.values())) if identical else np.ones(report.images, dtype=bool)
    report.agreeing = int(agreeing.sum())
    if agreeing.any():
        report.max_abs_agreeing = float(diff[agreeing].max())
        # SimpleCompareFunc replaces CompareFunc.simple in newer Polygraphy; older ones have only the latter.
        simple = getattr(polygraphy_compare, "SimpleCompareFunc", None) or CompareFunc.simple
        with _polygraphy_logging():
            accuracy = Comparator.compare_accuracy(
                _rows(results, agreeing, LOGITS), compare_func=simple(atol=atol, rtol=0.0)
            )
        report.polygraphy_passed = bool(accuracy)
    if backend is not built:
        report.notes.append(f"note: {built.label} cannot run here ({unavailable}); compared the bundle's ONNX files")
    if precision != manifest.precision:
        report.notes.append(
            f"note: ONNX Runtime cannot run the {manifest.precision} graph on this CPU; compared its fp32 twin"
        )
    if not classes:
        report.notes.append("note: the model has no classifier (0 classes): no top-1 figures; its output is compared")
    if images is None:
        report.notes.append("note: random inputs; selections on noise are unrepresentative of real images (--images)")
    return report
