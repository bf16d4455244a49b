"""``tokcompile sweep``: build one bundle per parameter value, evaluate each, plot the trade-off.

For a method parameter (EViT ``keep_rate``, ToMe ``r``) and a list of values, every value is
validated through the method's own config before anything is built, then each point is built
into ``OUT/points/<param>-<value>``, and all points are evaluated against the dense model in one
pass over the images (``evaluate_bundles``: every point shares the dense twin's weights and
precision; each batch runs the dense model once and every point once, in rotating order, so
the throughputs are measured under the same conditions and comparable across points). Results go to
``OUT/results.csv``, ``OUT/results.md`` and ``OUT/pareto.png`` (x = measured throughput, y =
top-1 accuracy when the images carry labels, else top-1 agreement with the dense model; also
agreement when the bundles have random weights, whose accuracy means nothing).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import TokcompileError
from .evaluate import RANDOM_WARNING, EvalResult, bars_and_logs, evaluate_bundles, progress_bar

logger = logging.getLogger(__name__)

MAX_POINTS = 100  # a range that expands past this is a typo (0.5:0.9:0.001), not a sweep
CSV_FILE, MD_FILE, PLOT_FILE = "results.csv", "results.md", "pareto.png"


def parse_values(text: str, flag: str, kind: str) -> list[Any]:
    """Sweep values from ``start:stop:step`` (stop included) or a comma list.

    kind ``"rate"``: floats in (0, 1] (``--keep-rate``); ranges are computed in decimal, so
    0.5:0.9:0.1 gives exactly [0.5, 0.6, 0.7, 0.8, 0.9] (no 0.6000000000000001).
    kind ``"int"``: ``--r``; a range must be integers and gives strings ("4", "8", ...); list
    items are passed on verbatim as strings, and ``;`` separates items that themselves hold
    commas or colons (a ToMe per-block list or schedule: ``"16:-1;8:-1"``).
    Raises TokcompileError (one line) for anything else; nothing has been built yet then.
    """
    s = text.strip()
    if kind not in ("rate", "int"):
        raise ValueError(f"kind must be 'rate' or 'int', got {kind!r}")
    if ";" in s:
        items = [v.strip() for v in s.split(";") if v.strip()]
    elif s.count(":") == 2:
        items = _expand_range(s, flag, kind)
    elif ":" in s and kind == "rate":
        raise TokcompileError(f"{flag} range must be start:stop:step, got '{text}'")
    else:
        items = [v.strip() for v in s.split(",") if v.strip()]
    if not items:
        raise TokcompileError(f"{flag} names no values, got '{text}'")
    values: list[Any] = []
    for item in items:
        value: Any = _rate(item, flag, text) if kind == "rate" else item
        if value not in values:
            values.append(value)
    if len(values) > MAX_POINTS:
        raise TokcompileError(f"{flag} '{text}' gives {len(values)} points; a sweep takes at most {MAX_POINTS}")
    return values


def _expand_range(s: str, flag: str, kind: str) -> list[str]:
    parts = [p.strip() for p in s.split(":")]
    try:
        start, stop, step = (Decimal(p) for p in parts)
        if not all(v.is_finite() for v in (start, stop, step)):
            raise InvalidOperation
    except InvalidOperation:
        raise TokcompileError(f"{flag} range start:stop:step must hold numbers, got '{s}'") from None
    if kind == "int" and any(v != v.to_integral_value() for v in (start, stop, step)):
        raise TokcompileError(f"{flag} range must hold integers, got '{s}'")
    if step <= 0:
        raise TokcompileError(f"{flag} range step must be > 0, got '{s}'")
    if start > stop:
        raise TokcompileError(f"{flag} range '{s}' is empty (start > stop)")
    count = int((stop - start) / step) + 1  # Decimal: exact for decimal inputs, stop included
    if count > MAX_POINTS:
        raise TokcompileError(f"{flag} '{s}' gives {count} points; a sweep takes at most {MAX_POINTS}")
    values = [start + i * step for i in range(count)]
    if kind == "int":
        return [str(int(v)) for v in values]
    return [str(v.normalize()) for v in values]


def _rate(item: str, flag: str, text: str) -> float:
    try:
        value = float(item)
    except ValueError:
        raise TokcompileError(
            f"{flag} must be start:stop:step or a comma list of numbers (0.5:0.9:0.1, 0.5,0.7), got '{text}'"
        ) from None
    if not 0.0 < value <= 1.0:
        raise TokcompileError(f"{flag} values must be in (0, 1], got {item}")
    return round(value, 12)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates maximised, sorted by x.

    p dominates q when p.x ≥ q.x and p.y ≥ q.y with one of them strict; equal points are all
    kept; NaN points are never on the front.
    """
    pts = [(float(x), float(y)) for x, y in points]
    front = []
    for i, (x, y) in enumerate(pts):
        if np.isnan(x) or np.isnan(y):
            continue
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y)
            for j, (ox, oy) in enumerate(pts)
            if j != i and not (np.isnan(ox) or np.isnan(oy))
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], -pts[i][1]))


@dataclass
class SweepPoint:
    value: Any  # as passed to build
    bundle: Path
    tokens: list[int]
    gmacs: float
    ideal_speedup: float
    result: EvalResult


@dataclass
class SweepResult:
    directory: Path
    model: str
    method: str
    param: str
    points: list[SweepPoint]
    dense_top1: Optional[float]
    dense_images_per_s: float  # measured in the same pass as every point
    dense_gmacs: float
    dense_tokens: int
    metric: str  # "top1" or "agreement": the plot's y
    front: list[int]  # indices into rows(): Pareto front, dense included as row 0
    files: list[Path] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per row of results.csv: the dense reference first, then the points."""
        first = self.points[0].result
        rows = [
            {
                "point": "dense",
                "method": "none",
                "param": self.param,
                "value": "",
                "bundle": "",
                "tokens": str(self.dense_tokens),
                "gmacs": self.dense_gmacs,
                "ideal_speedup": 1.0,
                "images": first.images,
                "skipped": first.skipped,
                "labelled": first.labelled,
                "top1": self.dense_top1,
                "agreement": 1.0,
                "cosine_mean": 1.0,
                "cosine_min": 1.0,
                "images_per_s": self.dense_images_per_s,
                "dense_images_per_s": self.dense_images_per_s,
                "speedup": 1.0,
            }
        ]
        for i, p in enumerate(self.points):
            r = p.result
            rows.append(
                {
                    "point": str(i + 1),
                    "method": self.method,
                    "param": self.param,
                    "value": p.value,
                    "bundle": str(p.bundle),
                    "tokens": "→".join(map(str, p.tokens)),
                    "gmacs": p.gmacs,
                    "ideal_speedup": p.ideal_speedup,
                    "images": r.images,
                    "skipped": r.skipped,
                    "labelled": r.labelled,
                    "top1": r.top1,
                    "agreement": r.agreement,
                    "cosine_mean": r.cosine_mean,
                    "cosine_min": r.cosine_min,
                    "images_per_s": r.images_per_s,
                    "dense_images_per_s": r.dense_images_per_s,
                    "speedup": r.speedup,
                }
            )
        for i, row in enumerate(rows):
            row["pareto"] = i in self.front
        return rows

    def y(self, row: dict[str, Any]) -> float:
        value = row[self.metric]
        return float("nan") if value is None else float(value)


def _spec_for_validation(model: str) -> Any:
    """The model's ModelSpec without weights: the module is built on the meta device (no memory, ~0.2 s)."""
    import timm
    import torch

    from ..models import resolve_model_name, spec_of

    timm_name = resolve_model_name(model)
    with torch.device("meta"):
        module = timm.create_model(timm_name, pretrained=False)
    return spec_of(module, timm_name)


def validate(model: str, method: str, param: str, values: Sequence[Any], precision: Optional[str]) -> None:
    """Every point's config through the method's own checks, before any build starts."""
    from ..methods import get_method, resolve_config
    from ..passes.cast_precision import precision_dtype

    m = get_method(method)
    if not m.pipeline:
        raise TokcompileError(f"method '{method}' reduces no tokens; sweep a token-reduction method (evit, ...)")
    if precision is not None:
        precision_dtype(precision)
    spec = _spec_for_validation(model)
    for value in values:
        resolve_config(m, spec, {param: value})


def point_name(param: str, value: Any) -> str:
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in str(value))
    return f"{param}-{safe}"


def sweep(
    model: str,
    param: str,
    values: Sequence[Any],
    method: Optional[str] = None,
    images: Optional[Path | str] = None,
    output: Optional[Path | str] = None,
    weights: Optional[str] = None,
    precision: Optional[str] = None,
    batch: Optional[int] = None,
    limit: Optional[int] = None,
    force: bool = False,
    progress: Optional[bool] = None,
    threads: Optional[int] = None,
) -> SweepResult:
    """Build and evaluate one bundle per value of ``param``; write CSV, Markdown and the Pareto plot."""
    from .. import _defaults
    from ..api import build
    from .images import list_images

    method = method or _defaults.METHOD
    if not values:
        raise TokcompileError(f"sweep needs at least one value of {param}")
    if batch is not None and batch < 1:
        raise TokcompileError(f"--batch must be a positive integer, got {batch}")
    if limit is not None and limit < 1:
        raise TokcompileError(f"--limit must be a positive integer, got {limit}")
    validate(model, method, param, values, precision)
    if images is not None:
        list_images(images)  # a missing or empty folder fails now, not after the first build
    else:
        logger.warning("%s", RANDOM_WARNING)
    out = Path(output) if output is not None else Path(f"sweep-{model}-{method}")
    out.mkdir(parents=True, exist_ok=True)
    built = []
    with bars_and_logs(progress), progress_bar(len(values), f"build {param}", progress, unit="point") as bar:
        for value in values:
            bar.set_postfix_str(f"{param}={value}")
            built.append(
                build(
                    model,
                    method=method,
                    precision=precision,
                    weights=weights,
                    output=out / "points" / point_name(param, value),
                    force=force,
                    **{param: value},
                )
            )
            bar.update(1)
    logger.info("sweep: evaluating %d points against one dense run per batch", len(built))
    results = evaluate_bundles(
        [b.bundle for b in built],
        images=images,
        batch=batch,
        limit=limit,
        progress=progress,
        threads=threads,
        warn_random=False,
    )
    points = [
        SweepPoint(
            value,
            b.bundle,
            list(b.manifest["tokens"]["sequence"]),
            b.manifest["gmacs"]["reduced"],
            b.manifest["gmacs"]["ideal_speedup"],
            result,
        )
        for value, b, result in zip(values, built, results)
    ]
    dense_gmacs, dense_tokens = built[0].manifest["gmacs"]["dense"], built[0].manifest["tokens"]["sequence"][0]
    labelled = all(p.result.top1 is not None for p in points)
    dense_top1 = points[0].result.dense_top1 if labelled else None
    random_weights = any(p.result.weights == "random" for p in points)
    if labelled and random_weights:
        logger.warning("sweep: the bundles have RANDOM weights; plotting agreement with dense, not accuracy")
    sweep_result = SweepResult(
        directory=out,
        model=model,
        method=method,
        param=param,
        points=points,
        dense_top1=dense_top1,
        dense_images_per_s=points[0].result.dense_images_per_s,
        dense_gmacs=dense_gmacs,
        dense_tokens=dense_tokens,
        metric="top1" if labelled and not random_weights else "agreement",
        front=[],
    )
    rows = sweep_result.rows()
    sweep_result.front = pareto_front([(r["images_per_s"], sweep_result.y(r)) for r in rows])
    sweep_result.files = [
        write_csv(sweep_result, out / CSV_FILE),
        write_markdown(sweep_result, out / MD_FILE, images),
        plot_pareto(sweep_result, out / PLOT_FILE),
    ]
    return sweep_result


CSV_COLUMNS = (
    "point",
    "method",
    "param",
    "value",
    "bundle",
    "tokens",
    "gmacs",
    "ideal_speedup",
    "images",
    "skipped",
    "labelled",
    "top1",
    "agreement",
    "cosine_mean",
    "cosine_min",
    "images_per_s",
    "dense_images_per_s",
    "speedup",
    "pareto",
)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(result: SweepResult, path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in result.rows():
            writer.writerow({k: _csv_value(row[k]) for k in CSV_COLUMNS})
    return path


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2%}"


def write_markdown(result: SweepResult, path: Path, images: Optional[Path | str]) -> Path:
    first = result.points[0].result
    source = (
        f"{first.images} images from `{images}`"
        + (f" (skipped {first.skipped} unreadable file{'s' if first.skipped != 1 else ''})" if first.skipped else "")
        if images is not None
        else f"{first.images} RANDOM inputs: agreement and cosine on noise are unrepresentative; no accuracy"
    )
    y = "top-1 accuracy" if result.metric == "top1" else "top-1 agreement with dense"
    lines = [
        f"# Sweep: {result.model}, {result.method}, {result.param}",
        "",
        f"- inputs: {source}",
        f"- batch {first.batch}, {first.precision} on ONNX Runtime; every point and the dense model timed on "
        "the same batches in one pass (rotating order)",
        f"- Pareto front (★): throughput vs {y}, dense model included",
        "",
        f"| {result.param} | tokens | GMACs | top-1 | agreement | cosine (mean/min) | img/s | speed-up | Pareto |",
        "|---|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for row in result.rows():
        cosine = "–" if row["cosine_mean"] is None else f"{row['cosine_mean']:.4f} / {row['cosine_min']:.4f}"
        name = "dense" if row["point"] == "dense" else str(row["value"])
        lines.append(
            f"| {name} | {row['tokens']} | {row['gmacs']:.3f} | {_pct(row['top1'])} | {_pct(row['agreement'])} | "
            f"{cosine} | {row['images_per_s']:.1f} | {row['speedup']:.2f}x | {'★' if row['pareto'] else ''} |"
        )
    notes = sorted({n for p in result.points for n in p.result.notes if "RANDOM weights" in n})
    if notes:
        lines += ["", *notes]
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_pareto(result: SweepResult, path: Path) -> Path:
    """Throughput (x) vs accuracy or agreement (y): points, the Pareto front joined, dense as a star."""
    # Figure + Agg canvas directly: no pyplot, so no global backend or display is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result.rows()
    xs = np.array([r["images_per_s"] for r in rows])
    ys = np.array([result.y(r) for r in rows]) * 100
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    front = result.front
    ax.plot(xs[front], ys[front], "-", color="tab:red", lw=1.5, zorder=1, label="Pareto front")
    points = np.arange(1, len(rows))
    on_front = np.array([i in front for i in points], dtype=bool)
    ax.scatter(xs[points][~on_front], ys[points][~on_front], s=40, color="tab:blue", zorder=2, label=result.method)
    ax.scatter(
        xs[points][on_front],
        ys[points][on_front],
        s=60,
        color="tab:blue",
        edgecolors="tab:red",
        linewidths=2,
        zorder=3,
        label=f"{result.method} (on the front)",
    )
    ax.scatter(
        xs[:1],
        ys[:1],
        s=220,
        marker="*",
        color="black",
        edgecolors="tab:red" if 0 in front else "black",
        linewidths=1.5,
        zorder=4,
        label="dense (reference)",
    )
    for i, row in enumerate(rows):
        label = "dense" if i == 0 else f"{result.param}={row['value']}"
        ax.annotate(label, (xs[i], ys[i]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    metric = "top-1 accuracy (%)" if result.metric == "top1" else "top-1 agreement with dense (%)"
    first = result.points[0].result
    ax.set_xlabel(f"measured throughput (img/s, batch {first.batch}, ONNX Runtime {first.precision})")
    ax.set_ylabel(metric)
    title = f"{result.model} · {result.method} · {result.param} sweep ({first.images} images)"
    if first.random_inputs:
        title += "\nrandom inputs: unrepresentative of real images"
    if first.weights == "random":
        title += "\nRANDOM weights: accuracy means nothing" + ("; agreement shown" if first.labelled else "")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
