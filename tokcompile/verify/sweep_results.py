"""What a sweep measured: its points and rows, the Pareto front, and the files it writes
(``results.csv``, ``results.md``, ``pareto.png``), each written to a temporary name and renamed.
``verify.sweep`` runs the sweep; this module only holds and renders its result."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..outputs import replace_atomically
from .evaluate import EvalResult

METHOD_SERIES, RESOLUTION_SERIES = "method", "lower resolution"
METRICS = {
    "top1": "top-1 accuracy",
    "cosine_mean": "features cosine to dense",
    "agreement": "top-1 agreement with dense",
}


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
    value: Any  # as passed to build (a baseline: its input size in px)
    bundle: Path
    tokens: list[int]
    gmacs: float
    ideal_speedup: float
    result: EvalResult
    series: str = METHOD_SERIES  # or RESOLUTION_SERIES: the dense model at a lower input size


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
    metric: str  # the plot's y: "top1", "cosine_mean" or "agreement"
    front: list[int]  # indices into rows(): Pareto front, dense included as row 0
    files: list[Path] = field(default_factory=list)
    baselines: list[SweepPoint] = field(default_factory=list)  # the dense model at lower resolutions
    dense_size: Optional[tuple[int, int]] = None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per row of results.csv: the dense reference first, the points, the baselines."""
        first = self.points[0].result
        rows = [
            {
                "point": "dense",
                "series": "dense",
                "method": "none",
                "param": self.param,
                "value": "",
                "img_size": size_label(self.dense_size),
                "bundle": "",
                "tokens": str(self.dense_tokens),
                "gmacs": self.dense_gmacs,
                "ideal_speedup": 1.0,
                "images": first.images,
                "skipped": first.skipped,
                "labelled": first.labelled,
                "top1": self.dense_top1,
                "agreement": 1.0 if first.agreement is not None else None,
                "cosine_mean": 1.0,
                "cosine_p5": 1.0,
                "cosine_min": 1.0,
                "images_per_s": self.dense_images_per_s,
                "dense_images_per_s": self.dense_images_per_s,
                "speedup": 1.0,
            }
        ]
        for i, p in enumerate([*self.points, *self.baselines]):
            r = p.result
            baseline = p.series == RESOLUTION_SERIES
            rows.append(
                {
                    "point": f"img_size-{p.value}" if baseline else str(i + 1),
                    "series": p.series if baseline else self.method,
                    "method": "none" if baseline else self.method,
                    "param": "img_size" if baseline else self.param,
                    "value": p.value,
                    "img_size": size_label(r.input_size),
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
                    "cosine_p5": r.cosine_p5,
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

    def label(self, row: dict[str, Any]) -> str:
        """A row's short name: dense, the parameter value, or the baseline's size in px."""
        if row["series"] == "dense":
            return "dense"
        return f"{row['value']} px" if row["series"] == RESOLUTION_SERIES else str(row["value"])


def size_label(size: Optional[Sequence[int]]) -> str:
    if not size:
        return ""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


CSV_COLUMNS = (
    "point",
    "series",
    "method",
    "param",
    "value",
    "img_size",
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
    "cosine_p5",
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
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in result.rows():
                writer.writerow({k: _csv_value(row[k]) for k in CSV_COLUMNS})

    return replace_atomically(path, write)


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2%}"


def _cosines(row: dict[str, Any]) -> str:
    if row["cosine_mean"] is None:
        return "–"
    return f"{row['cosine_mean']:.4f} / {row['cosine_p5']:.4f} / {row['cosine_min']:.4f}"


def caveat_lines(result: SweepResult) -> list[str]:
    """The RANDOM-weights/heads notes of every point and baseline, once each, sorted."""
    return sorted({n for p in [*result.points, *result.baselines] for n in p.result.notes if "RANDOM" in n})


def write_markdown(result: SweepResult, path: Path, images: Optional[Path | str]) -> Path:
    first = result.points[0].result
    source = (
        f"{first.images} images from `{images}`"
        + (f" (skipped {first.skipped} unreadable file{'s' if first.skipped != 1 else ''})" if first.skipped else "")
        if images is not None
        else f"{first.images} RANDOM inputs: agreement and cosine on noise are unrepresentative; no accuracy"
    )
    lines = [
        f"# Sweep: {result.model}, {result.method} ({result.param}) vs the dense model at lower resolutions",
        "",
        f"- inputs: {source}, each preprocessed at its bundle's input size",
        f"- batch {first.batch}, {first.precision} on ONNX Runtime; every bundle and the dense model timed on "
        "the same batches in one pass (rotating order)",
        f"- Pareto front (★): throughput vs {METRICS[result.metric]}, every row included",
        "- a method is worth it where it beats the lower-resolution rows at equal GMACs",
        "",
        "| series | value | input | tokens | GMACs | top-1 | agreement | cosine (mean / p5 / min) | img/s | speed-up "
        "| Pareto |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for row in result.rows():
        lines.append(
            f"| {row['series']} | {result.label(row)} | {row['img_size']} | {row['tokens']} | {row['gmacs']:.3f} | "
            f"{_pct(row['top1'])} | {_pct(row['agreement'])} | {_cosines(row)} | {row['images_per_s']:.1f} | "
            f"{row['speedup']:.2f}x | {'★' if row['pareto'] else ''} |"
        )
    notes = caveat_lines(result)
    if notes:
        lines += ["", *notes]

    def write(tmp: Path) -> None:
        tmp.write_text("\n".join(lines) + "\n")

    return replace_atomically(path, write)


def plot_pareto(result: SweepResult, path: Path) -> Path:
    """Two panels, y = the sweep's metric: against GMACs (equal compute: does the method beat a
    smaller image?) and against measured throughput (with the Pareto front). Method points in
    blue, the lower-resolution dense series in orange, the dense reference as a star."""
    # Figure + Agg canvas directly: no pyplot, so no global backend or display is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result.rows()
    ys = np.array([result.y(r) for r in rows]) * (100 if result.metric != "cosine_mean" else 1)
    series = np.array([r["series"] for r in rows])
    fig = Figure(figsize=(12.0, 5.2), dpi=120)
    FigureCanvasAgg(fig)
    first = result.points[0].result
    styles: tuple[tuple[str, dict[str, Any], str], ...] = (
        (result.method, dict(marker="o", color="tab:blue"), f"{result.method} ({result.param})"),
        (RESOLUTION_SERIES, dict(marker="s", color="tab:orange"), "dense at lower resolution"),
    )
    for index, (key, xlabel) in enumerate(
        (
            ("gmacs", "GMACs per image"),
            ("images_per_s", f"measured throughput (img/s, batch {first.batch}, ONNX Runtime {first.precision})"),
        )
    ):
        ax = fig.add_subplot(1, 2, index + 1)
        xs = np.array([r[key] for r in rows], dtype=float)
        if key == "images_per_s":
            front = result.front
            ax.plot(xs[front], ys[front], "-", color="tab:red", lw=1.2, zorder=1, label="Pareto front")
        for name, style, label in styles:
            members = np.flatnonzero(series == name)
            if members.size:
                order = members[np.argsort(xs[members])]
                ax.plot(xs[order], ys[order], "-", lw=1.0, alpha=0.6, color=style["color"], zorder=2)
                ax.scatter(xs[order], ys[order], s=45, zorder=3, label=label, **style)
        ax.scatter(xs[:1], ys[:1], s=220, marker="*", color="black", zorder=4, label="dense (reference)")
        for i, row in enumerate(rows):
            ax.annotate(result.label(row), (xs[i], ys[i]), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRICS[result.metric] + (" (%)" if result.metric != "cosine_mean" else ""))
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.12, y=0.12)
        ax.legend(loc="best", fontsize=8)
    title = f"{result.model} · {result.method} ({result.param}) vs dense at lower resolution · {first.images} images"
    if first.random_inputs:
        title += "\nrandom inputs: unrepresentative of real images"
    if first.weights == "random":
        title += f"\nRANDOM weights: accuracy means nothing; {METRICS[result.metric]} shown"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
