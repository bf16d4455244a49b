"""``tokcompile sweep``: build one bundle per parameter value, evaluate each, plot the trade-off.

For a method parameter (EViT ``keep_rate``, ToMe ``r``) and a list of values, every value is
validated through the method's own config before anything is built, then each point is built
into ``OUT/points/<param>-<value>``.

Beside the method's points, the sweep builds the **dense model at lower input resolutions**
(``OUT/baselines/img_size-<px>``; position embeddings resampled from the same weights, as
``--weights`` does for another grid): the cheapest way to save compute, which a token-reduction
method has to beat to be worth it. The resolutions are picked at the same GMACs range as the
method's points (those inside it plus the nearest one on each side, at most ``--resolutions-max``),
each fed the same photos preprocessed at its own size.

All of them are evaluated against the full-resolution dense model in one pass over the images
(``evaluate_bundles``: each batch runs the dense model once and every bundle once, in rotating
order, so the throughputs are measured under the same conditions and comparable). Results go to
``OUT/results.csv``, ``OUT/results.md`` and ``OUT/pareto.png`` (y = top-1 accuracy when the
images carry labels and the weights are not random, else the cosine of the final features to the
dense model, else top-1 agreement; x = GMACs in one panel, measured throughput in the other).
An existing ``results.csv`` is only replaced with ``--force``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional

from ..data.images import spread
from ..errors import TokcompileError
from ..outputs import replace_atomically
from .evaluate import RANDOM_WARNING, bars_and_logs, evaluate_bundles, progress_bar
from .sweep_results import (
    METRICS,
    RESOLUTION_SERIES,
    SweepPoint,
    SweepResult,
    pareto_front,
    plot_pareto,
    size_label,
    write_csv,
    write_markdown,
)

logger = logging.getLogger(__name__)

MAX_POINTS = 100  # a range that expands past this is a typo (0.5:0.9:0.001), not a sweep
CSV_FILE, MD_FILE, PLOT_FILE = "results.csv", "results.md", "pareto.png"
POINTS_DIR, BASELINES_DIR = "points", "baselines"
BASELINE_WEIGHTS = "dense-weights.safetensors"  # the full-size weights the baselines resample


def parse_values(text: str, flag: str, kind: str) -> list[Any]:
    """Sweep values from ``start:stop:step`` (stop included) or a comma list.

    kind ``"rate"``: floats in (0, 1] (``--keep-rate``); ranges are computed in decimal, so
    0.5:0.9:0.1 gives exactly [0.5, 0.6, 0.7, 0.8, 0.9] (no 0.6000000000000001).
    kind ``"number"``: any finite floats (``--param beta=3:9:3``), ranges computed in decimal.
    kind ``"int"``: ``--r``; a range must be integers and gives strings ("4", "8", ...); list
    items are passed on verbatim as strings, and ``;`` separates items that themselves hold
    commas or colons (a ToMe per-block list or schedule: ``"16:-1;8:-1"``).
    Raises TokcompileError (one line) for anything else; nothing has been built yet then.
    """
    s = text.strip()
    if kind not in ("rate", "int", "number"):
        raise ValueError(f"kind must be 'rate', 'int' or 'number', got {kind!r}")
    if ";" in s:
        items = [v.strip() for v in s.split(";") if v.strip()]
    elif s.count(":") == 2:
        items = _expand_range(s, flag, kind)
    elif ":" in s and kind in ("rate", "number"):
        raise TokcompileError(f"{flag} range must be start:stop:step, got '{text}'")
    else:
        items = [v.strip() for v in s.split(",") if v.strip()]
    if not items:
        raise TokcompileError(f"{flag} names no values, got '{text}'")
    values: list[Any] = []
    for item in items:
        value: Any = _rate(item, flag, text, kind == "rate") if kind != "int" else item
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


def _rate(item: str, flag: str, text: str, unit: bool = True) -> float:
    """One value: a finite float, in (0, 1] when ``unit`` (a rate)."""
    try:
        value = float(item)
    except ValueError:
        raise TokcompileError(
            f"{flag} must be start:stop:step or a comma list of numbers (0.5:0.9:0.1, 0.5,0.7), got '{text}'"
        ) from None
    if not math.isfinite(value):
        raise TokcompileError(f"{flag} values must be finite numbers, got {item}")
    if unit and not 0.0 < value <= 1.0:
        raise TokcompileError(f"{flag} values must be in (0, 1], got {item}")
    return round(value, 12)


def validate(
    model: str,
    method: str,
    param: str,
    values: Sequence[Any],
    precision: Optional[str],
    model_kwargs: Optional[dict[str, Any]] = None,
) -> Any:
    """Every point's config through the method's own checks, before any build starts; returns the spec."""
    from ..methods import get_method, resolve_config
    from ..models import model_spec
    from ..precision import check_precision

    m = get_method(method)
    if not m.pipeline:
        raise TokcompileError(f"method '{method}' reduces no tokens; sweep a token-reduction method (evit, ...)")
    if precision is not None:
        check_precision(precision)
    spec = model_spec(model, **(model_kwargs or {}))
    for value in values:
        resolve_config(m, spec, {param: value})
    return spec


def point_name(param: str, value: Any) -> str:
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in str(value))
    return f"{param}-{safe}"


def dense_gmacs_at(timm_name: str, model_kwargs: dict[str, Any], size: tuple[int, int]) -> float:
    """GMACs of the dense model at input ``size``, counted on the meta device (shapes only, no weights)."""
    import timm
    import torch

    from ..models.flops import count_gmacs

    with torch.device("meta"):
        module = timm.create_model(timm_name, pretrained=False, **{**model_kwargs, "img_size": size}).eval()
        return count_gmacs(module, (3, *size))


def baseline_sizes(
    spec: Any, model_kwargs: dict[str, Any], point_gmacs: Sequence[float], count: int
) -> list[tuple[int, int]]:
    """Lower input sizes of the dense model whose GMACs span the method points' range.

    Candidates keep the aspect ratio at whole patches, from 2 patch rows up to one row below the
    model's grid. Those whose GMACs lie in [min, max] of ``point_gmacs`` are taken with the
    nearest candidate below and above the range, thinned evenly (ends kept) to ``count``.
    """
    rows, cols = spec.grid
    (ph, pw), candidates = spec.patch_size, []
    for r in range(2, rows):
        size = (r * ph, max(1, round(r * cols / rows)) * pw)
        candidates.append((dense_gmacs_at(spec.name, model_kwargs, size), size))
    lo, hi = min(point_gmacs), max(point_gmacs)
    inside = [c for c in candidates if lo <= c[0] <= hi]
    below = [c for c in candidates if c[0] < lo][-1:]
    above = [c for c in candidates if c[0] > hi][:1]
    chosen = below + inside + above
    if count < 1 or not chosen:
        return []
    return [size for _, size in spread(chosen, count)]


def parse_resolutions(text: Optional[str], spec: Any) -> Optional[list[tuple[int, int]]]:
    """--resolutions: None/'auto' → None (pick by GMACs); 'none' → []; '160,192' → square sizes.

    Each size must be a multiple of the patch size and smaller than the model's input."""
    if text is None or text.strip() == "auto":
        return None
    if text.strip() == "none":
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TokcompileError(
            f"--resolutions must be auto, none or comma-separated sizes in px, got '{text}'"
        ) from None
    ph, pw = spec.patch_size
    for v in values:
        if v < 1 or v % ph or v % pw or v >= min(spec.img_size):
            raise TokcompileError(
                f"--resolutions sizes must be multiples of the {ph}×{pw} patch below the model's "
                f"{spec.img_size[0]}×{spec.img_size[1]} input, got {v}"
            )
    return [(v, v) for v in dict.fromkeys(values)]


def check_output(out: Path, force: bool) -> None:
    """Refuse, before anything is built: a file at OUT, or an earlier sweep's results without --force."""
    if out.exists() and not out.is_dir():
        raise TokcompileError(f"-o '{out}' exists and is not a directory; choose another -o")
    if (out / CSV_FILE).exists() and not force:
        raise TokcompileError(
            f"-o '{out}' holds the results of an earlier sweep ({CSV_FILE}); choose another -o or pass --force "
            "to replace them"
        )


def _baseline_weights(model: str, weights: Optional[str], model_kwargs: dict[str, Any], out: Path) -> str:
    """A checkpoint path for the baselines: --weights PATH itself, else the full-size model's
    weights (pretrained or random) saved once under OUT so every size resamples the same tensors."""
    from ..models import create_model

    if weights not in (None, "auto", "pretrained", "random"):
        return str(weights)
    from safetensors.torch import save_file

    module = create_model(model, weights=weights, **model_kwargs).model
    path = out / BASELINES_DIR / BASELINE_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in module.state_dict().items()}
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp)))
    return str(path)


def sweep(
    build: Callable[..., Any],
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
    model_kwargs: Optional[dict[str, Any]] = None,
    resolutions: Optional[str] = None,
    max_resolutions: Optional[int] = None,
) -> SweepResult:
    """Build and evaluate one bundle per value of ``param`` and the dense model at lower input
    resolutions; write CSV, Markdown and the Pareto plot.

    ``build``: ``tokcompile.build`` (passed in: verify sits below the build API in the layers).

    ``model_kwargs`` go to ``timm.create_model`` for every bundle (``{"img_size": 224}``);
    ``resolutions``: "auto" (default: at most ``max_resolutions`` sizes at the points' GMACs),
    "none", or comma-separated sizes in px.
    """
    from .. import _defaults
    from ..data.images import list_images

    method = method or _defaults.METHOD
    model_kwargs = dict(model_kwargs or {})
    max_resolutions = _defaults.SWEEP_RESOLUTIONS if max_resolutions is None else max_resolutions
    if not values:
        raise TokcompileError(f"sweep needs at least one value of {param}")
    if batch is not None and not 1 <= batch <= _defaults.MAX_BATCH:
        raise TokcompileError(f"--batch must be a positive integer ≤ {_defaults.MAX_BATCH}, got {batch}")
    if limit is not None and limit < 1:
        raise TokcompileError(f"--limit must be a positive integer, got {limit}")
    if max_resolutions < 0:
        raise TokcompileError(f"--resolutions-max must be ≥ 0, got {max_resolutions}")
    spec = validate(model, method, param, values, precision, model_kwargs)
    sizes = parse_resolutions(resolutions, spec)
    out = Path(output) if output is not None else Path(f"sweep-{model}-{method}")
    check_output(out, force)
    if images is not None:
        list_images(images)  # a missing or empty folder fails now, not after the first build
    else:
        logger.warning("%s", RANDOM_WARNING)
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
                    output=out / POINTS_DIR / point_name(param, value),
                    force=force,
                    model_kwargs=model_kwargs,
                    **{param: value},
                )
            )
            bar.update(1)
    if sizes is None:
        sizes = baseline_sizes(spec, model_kwargs, [b.manifest.gmacs.reduced for b in built], max_resolutions)
    baselines = []
    if sizes:
        logger.info(
            "sweep: dense model at %s px as the lower-resolution baseline", ", ".join(size_label(s) for s in sizes)
        )
        path = _baseline_weights(model, weights, model_kwargs, out)
        with bars_and_logs(progress), progress_bar(len(sizes), "build img_size", progress, unit="point") as bar:
            for size in sizes:
                baselines.append(
                    build(
                        model,
                        method="none",
                        precision=precision,
                        weights=path,
                        output=out / BASELINES_DIR / f"img_size-{size_label(size)}",
                        force=force,
                        model_kwargs={**model_kwargs, "img_size": size if size[0] != size[1] else size[0]},
                    )
                )
                bar.update(1)
    logger.info("sweep: evaluating %d bundles against one dense run per batch", len(built) + len(baselines))
    results = evaluate_bundles(
        [b.bundle for b in built],
        images=images,
        batch=batch,
        limit=limit,
        progress=progress,
        threads=threads,
        warn_random=False,
        baselines=[b.bundle for b in baselines],
    )
    dense_gmacs, dense_tokens = built[0].manifest.gmacs.dense, built[0].manifest.tokens.sequence[0]
    points = [
        SweepPoint(
            value,
            b.bundle,
            list(b.manifest.tokens.sequence),
            b.manifest.gmacs.reduced,
            b.manifest.gmacs.ideal_speedup,
            result,
        )
        for value, b, result in zip(values, built, results)
    ]
    lowres = [
        SweepPoint(
            size_label(size),
            b.bundle,
            [b.manifest.tokens.sequence[0]],
            b.manifest.gmacs.dense,
            dense_gmacs / b.manifest.gmacs.dense,
            result,
            RESOLUTION_SERIES,
        )
        for size, b, result in zip(sizes, baselines, results[len(built) :])
    ]
    first = points[0].result
    labelled = all(p.result.top1 is not None for p in points)
    random_weights = any(p.result.weights == "random" for p in points)
    metric = (
        "top1"
        if labelled and not random_weights
        else "cosine_mean"
        if all(p.result.cosine_mean is not None for p in points)
        else "agreement"
    )
    if labelled and random_weights:
        logger.warning("sweep: the bundles have RANDOM weights; plotting %s, not accuracy", METRICS[metric])
    sweep_result = SweepResult(
        directory=out,
        model=model,
        method=method,
        param=param,
        points=points,
        dense_top1=first.dense_top1 if labelled else None,
        dense_images_per_s=first.dense_images_per_s,
        dense_gmacs=dense_gmacs,
        dense_tokens=dense_tokens,
        metric=metric,
        front=[],
        baselines=lowres,
        dense_size=tuple(spec.img_size),
    )
    rows = sweep_result.rows()
    sweep_result.front = pareto_front([(r["images_per_s"], sweep_result.y(r)) for r in rows])
    sweep_result.files = [
        write_csv(sweep_result, out / CSV_FILE),
        write_markdown(sweep_result, out / MD_FILE, images),
        plot_pareto(sweep_result, out / PLOT_FILE),
    ]
    return sweep_result
