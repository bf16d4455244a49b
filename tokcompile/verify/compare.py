"""``tokcompile compare``: the bundle against the eager PyTorch model it was built from.

Polygraphy does the running and the numeric check: a ``TorchRunner`` (eager GraphModule on
the CPU; Polygraphy's own PytRunner needs CUDA) and a runner over the bundle as
``tokcompile.load`` runs it (its engines where its backend runs here, else its ONNX files with
ONNX Runtime), driven by ``Comparator.run`` and checked on the logits with
``Comparator.compare_accuracy``. Beyond that this module reports top-1 agreement and, per
reduction layer, whether both sides kept the same tokens: a precision change that flips a
selection shows up as a flip, not as a vague tolerance failure. Merging methods (ToMe) report
``merge_map_<block>`` outputs as partitions of the original tokens: a layer agrees on an image
when both sides grouped the original tokens identically, whatever labels the groups carry.
"""

from __future__ import annotations

import logging
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
from ..passes._outputs import named_outputs
from ..runtime.bundle import read_manifest

logger = logging.getLogger(__name__)


class StagedBundleRunner(BaseRunner):
    """Polygraphy runner over a bundle as ``tokcompile.load`` runs it (stage files + bucket dispatch)."""

    def __init__(self, runner: Any, input_name: str, input_shape: tuple[int, ...]) -> None:
        super().__init__(name=runner.backend, prefix=runner.backend)
        self.runner, self.input_name, self.input_shape = runner, input_name, input_shape

    def activate_impl(self):
        pass

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
    precision: str  # precision actually executed on both sides
    atol: float
    images: int
    max_abs: float
    mean_abs: float
    top1_agreement: float
    polygraphy_passed: bool
    # per reduction layer: fraction of images whose kept token sets are identical
    layer_agreement: dict[str, float] = field(default_factory=dict)
    # per reduction layer: mean over images of |kept_ref ∩ kept_bundle| / |kept_ref|; for a merge
    # map, the share of original tokens whose group has the same members on both sides
    layer_overlap: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.polygraphy_passed and self.max_abs <= self.atol

    def lines(self) -> list[str]:
        out = [
            f"compared {self.images} images, {self.precision} on both sides, atol {self.atol:g}",
            f"logits: max |Δ| {self.max_abs:.3g}, mean |Δ| {self.mean_abs:.3g}; top-1 agreement {self.top1_agreement:.1%}",
        ]
        for name, rate in self.layer_agreement.items():
            flips = "" if rate == 1.0 else f" (mean overlap {self.layer_overlap[name]:.2%})  ← selection flips"
            what = "token groupings" if name.startswith(MERGE_MAP_PREFIX) else "kept-token sets"
            out.append(f"{name}: identical {what} for {rate:.1%} of images{flips}")
        return out + self.notes


MERGE_MAP_PREFIX = "merge_map_"  # passes/output_merge_maps.py names them so (torch-free import here)


def _canonical_groups(labels: np.ndarray) -> np.ndarray:
    """Group labels renumbered 0, 1, ... by first occurrence: equal iff the partitions are equal."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    renumber = np.empty_like(first)
    renumber[np.argsort(first)] = np.arange(first.size)
    return renumber[inverse.reshape(-1)]


def _same_group_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of tokens whose group (set of co-members) is the same under labelings a and b."""
    return float(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all(axis=1).mean())


def _random_batches(shape: tuple[int, ...], batch: int, count: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.standard_normal((batch, *shape), dtype=np.float32)


def compare(
    bundle: Path | str,
    images: Optional[Path | str] = None,
    batch: Optional[int] = None,
    samples: Optional[int] = None,
    atol: Optional[float] = None,
    seed: int = 0,
) -> CompareReport:
    """Run the bundle and its PyTorch reference on the same inputs and report agreement."""
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.comparator import compare as polygraphy_compare

    from ..api import rebuild
    from ..runtime.runner import BundleRunner
    from .images import image_batches

    directory = Path(bundle)
    manifest = read_manifest(directory)
    stage = manifest["stages"][0]
    # A bundle runs its engines where its backend runs here, its ONNX files (ONNX Runtime) elsewhere.
    built = get_backend(manifest["backend"])
    unavailable = built.unavailable(manifest)
    backend = built if unavailable is None else get_backend(REFERENCE)
    loaded = BundleRunner(directory, manifest, backend=backend.name)
    precision = loaded.precision
    atol = atol if atol is not None else _defaults.COMPARE_ATOL[precision]
    batch = batch or _defaults.COMPARE_BATCH
    gm, spec, info = rebuild(manifest, precision=precision)
    shape = tuple(manifest["model"]["input_shape"])
    if images is not None:
        data = list(image_batches(images, manifest["model"]["timm_name"], batch, limit=(samples or 0) * batch or None))
    else:
        data = list(_random_batches(shape, batch, samples or _defaults.COMPARE_SAMPLES, seed))
    input_name = stage["inputs"][0]
    feeds = [OrderedDict([(input_name, x)]) for x in data]
    outputs = info.get("outputs") or named_outputs(gm)
    runners = [TorchRunner(gm, input_name, shape, outputs), StagedBundleRunner(loaded, input_name, shape)]
    results = Comparator.run(runners, data_loader=feeds)
    # SimpleCompareFunc replaces CompareFunc.simple in newer Polygraphy; older ones have only the latter.
    simple = getattr(polygraphy_compare, "SimpleCompareFunc", None) or CompareFunc.simple
    only_logits = simple(
        atol=atol, rtol=0.0, find_output_func=lambda name, index, it: [name] if name == "logits" else None
    )
    accuracy = Comparator.compare_accuracy(results, compare_func=only_logits)
    ref_iters, got_iters = list(results.values())
    # per image, since token-dimension outputs of a staged bundle are as wide as each batch's bucket
    ref = {n: [row for it in ref_iters for row in it[n]] for n in outputs}
    got = {n: [row for it in got_iters for row in it[n]] for n in outputs}
    ref["logits"], got["logits"] = np.stack(ref["logits"]), np.stack(got["logits"])
    diff = np.abs(ref["logits"].astype(np.float64) - got["logits"].astype(np.float64))
    report = CompareReport(
        precision=precision,
        atol=atol,
        images=int(ref["logits"].shape[0]),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        top1_agreement=float((ref["logits"].argmax(1) == got["logits"].argmax(1)).mean()),
        polygraphy_passed=bool(accuracy),
    )
    for name in (n for n in outputs if n.startswith(("kept_ids_", "count_"))):
        # -1 marks padding (and EViT's fused token): only real tokens are compared
        pairs = [
            (set(np.atleast_1d(a).tolist()) - {-1}, set(np.atleast_1d(b).tolist()) - {-1})
            for a, b in zip(ref[name], got[name])
        ]
        report.layer_agreement[name] = float(np.mean([a == b for a, b in pairs]))
        report.layer_overlap[name] = float(np.mean([len(a & b) / max(1, len(a)) for a, b in pairs]))
    for name in (n for n in outputs if n.startswith(MERGE_MAP_PREFIX)):
        groups = [(_canonical_groups(a), _canonical_groups(b)) for a, b in zip(ref[name], got[name])]
        report.layer_agreement[name] = float(np.mean([np.array_equal(a, b) for a, b in groups]))
        report.layer_overlap[name] = float(np.mean([_same_group_share(a, b) for a, b in groups]))
    if backend is not built:
        report.notes.append(f"note: {built.label} cannot run here ({unavailable}); compared the bundle's ONNX files")
    if precision != manifest["precision"]:
        report.notes.append(
            f"note: ONNX Runtime cannot run the {manifest['precision']} graph on this CPU; compared its fp32 twin"
        )
    return report
