"""Calibration of a staged bundle: observed token counts, buckets per stage, expected GMACs.

Counts come from the eager float32 model on calibration images (``--calib DIR``: at most
``CALIB_IMAGES`` of them, evenly spaced over the folder's sorted files, preprocessed at the
model's input size by ``data.images.preprocessing``) or, with a warning that the manifest and
report carry, random inputs. ``--buckets auto`` then picks, per stage boundary, at most
``--max-buckets`` counts with ``runtime.buckets.choose_buckets`` on the target profile's latency
curve; an explicit list is used for every boundary. GMACs are counted per image at its own
token counts (staged eager run, no padding) and averaged over every calibration image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import _defaults
from ..errors import TokcompileError
from ..manifest import Boundary, StageEntry, TokensRecord
from .buckets import choose_buckets, expected_latency, validate_buckets
from .staged import DimCut, EagerStage, StagedRunner, torch_stage_calls

logger = logging.getLogger(__name__)


RANDOM_CALIBRATION = (
    "no --calib images: token counts, buckets and GMACs come from {n} RANDOM-noise inputs, which are "
    "unrepresentative of real images. Pass --calib DIR with a few dozen real images"
)


def _calibration_images(
    spec: Any, calib: Optional[str | Path], limit: int
) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """(images [n, 3, H, W] at the model's input size, the manifest's calibration record, the
    warnings about them for the manifest's token record)."""
    if calib is None:
        count = min(limit, _defaults.CALIB_RANDOM_IMAGES)
        warning = RANDOM_CALIBRATION.format(n=count)
        logger.warning("WARNING: %s.", warning)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((count, *spec.input_shape), dtype=np.float32)
        return images, {"source": "random", "images": count}, [warning]
    from ..data.images import ImageStats, list_images, load_batches, preprocessing, spread

    listed = list_images(calib, "--calib")
    files = spread(listed, limit, "--calib")
    preprocess = preprocessing(spec.name, spec.input_shape)
    stats = ImageStats()
    batches = [x for x, _ in load_batches(files, preprocess, 16, stats, source=f"--calib '{calib}'")]
    skipped = f", {len(stats.skipped)} undecodable skipped" if stats.skipped else ""
    logger.info(
        "calibrate: %d of the %d images in %s (evenly spaced over the sorted files%s), preprocessed %s",
        stats.decoded,
        len(listed),
        calib,
        skipped,
        preprocess.describe(),
    )
    record = {
        "source": str(calib),
        "images": stats.decoded,
        "files": len(listed),
        "selection": f"{len(files)} evenly spaced over the {len(listed)} sorted files",
        "skipped": len(stats.skipped),
        "preprocess": preprocess.record(),
    }
    return np.concatenate(batches), record, []


def parse_buckets(value: Optional[str | Sequence[int]]) -> Optional[list[int]]:
    """'auto'/None → None (choose); '64,128' or [64, 128] → list."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise TokcompileError(f"--buckets must be 'auto' or comma-separated integers, got '{value}'") from None
    return list(value)


@dataclass(frozen=True)
class StagingConfig:
    """The staging flags of a build, checked before anything loads: ``calib`` (None: random inputs),
    explicit ``buckets`` (None: auto, chosen with ``profile``'s latency curve), ``max_buckets``."""

    calib: Optional[Path]
    buckets: Optional[tuple[int, ...]]
    max_buckets: int
    profile: Any  # profiles.Profile, or None with explicit buckets


def check_staging(
    spec: Any,
    calib: Optional[str | Path],
    buckets: Optional[str | Sequence[int]],
    max_buckets: Optional[int],
    profile_name: Optional[str],
) -> StagingConfig:
    """Validate the staging flags (bucket list, profile file, calibration folder) in milliseconds."""
    from ..data.images import list_images
    from ..profiles import load_profile

    explicit = parse_buckets(buckets)
    checked = tuple(validate_buckets(explicit, spec.num_tokens)) if explicit is not None else None
    max_buckets = max_buckets if max_buckets is not None else _defaults.MAX_BUCKETS
    if max_buckets < 1:
        raise TokcompileError(f"--max-buckets must be ≥ 1, got {max_buckets}")
    profile = load_profile(profile_name or _defaults.PROFILE) if checked is None else None
    if calib is not None:
        list_images(calib, "--calib")  # a missing or empty folder fails now, not after the export
    return StagingConfig(Path(calib) if calib is not None else None, checked, max_buckets, profile)


@dataclass
class CalibrationPlan:
    """The staging config with its calibration images loaded."""

    images: np.ndarray
    record: dict[str, Any]  # manifest tokens.calibration
    explicit: Optional[list[int]]
    max_buckets: int
    profile: Any  # Profile, or None with explicit buckets
    warnings: list[str]  # about the images (random inputs), said when the plan was made


def load_calibration(spec: Any, staging: StagingConfig) -> CalibrationPlan:
    images, record, warnings = _calibration_images(spec, staging.calib, _defaults.CALIB_IMAGES)
    explicit = list(staging.buckets) if staging.buckets is not None else None
    return CalibrationPlan(images, record, explicit, staging.max_buckets, staging.profile, warnings)


def plan_calibration(
    spec: Any,
    calib: Optional[str | Path],
    buckets: Optional[str | Sequence[int]],
    max_buckets: Optional[int],
    profile_name: Optional[str],
) -> CalibrationPlan:
    """``check_staging`` and ``load_calibration`` in one step."""
    return load_calibration(spec, check_staging(spec, calib, buckets, max_buckets, profile_name))


@dataclass
class Calibration:
    """What calibration found: buckets per boundary stage (by index), the manifest's token record,
    and the mean GMACs per image at each image's own token counts."""

    buckets: dict[int, list[int]]
    tokens: TokensRecord
    gmacs: float


def calibrate(
    plan: CalibrationPlan, gm: Any, spec: Any, stages: list[StageEntry], final: dict[str, str]
) -> Calibration:
    """Token counts of the calibration images after each boundary stage and the buckets for them."""
    from ..export.stages import cut_stages
    from ..models.flops import count_gmacs_staged
    from ..passes.graph_outputs import named_outputs

    images, explicit, profile = plan.images, plan.explicit, plan.profile
    with torch.no_grad():
        outputs = dict(zip(named_outputs(gm), gm(torch.from_numpy(images))))
    value_of = {v: k for k, v in final.items()}
    latency = profile.latency(spec.embed_dim, _defaults.BUCKET_BATCH) if profile is not None else None
    boundaries: list[Boundary] = []
    buckets: dict[int, list[int]] = {}
    warnings: list[str] = []
    missed: list[tuple[int, np.ndarray]] = []  # boundaries where most counts lie above every --buckets value
    for stage in stages:
        if not stage.count:
            continue
        name = value_of[stage.count]
        counts = outputs[name].numpy().astype(int)
        if explicit is not None:
            chosen = list(explicit)
        else:
            assert latency is not None  # auto buckets come with a profile (check_staging)
            chosen = list(
                choose_buckets(counts, spec.num_tokens, latency, plan.max_buckets, _defaults.BUCKET_BATCH).buckets
            )
        buckets[stage.index] = chosen
        if explicit is not None and float((counts > max(chosen)).mean()) > 0.5:
            missed.append((stage.index, counts))
        expected = (
            round(expected_latency(chosen, counts, latency, _defaults.BUCKET_BATCH), 4) if latency is not None else None
        )
        boundaries.append(
            Boundary(
                stage.index,
                name,
                round(float(counts.mean()), 2),
                int(counts.min()),
                int(counts.max()),
                chosen,
                expected,
            )
        )
    cut, cut_final = cut_stages(gm)
    eager = [
        EagerStage(
            s.inputs,
            s.inputs,
            s.outputs,
            s.token_values,
            s.count,
            [],
            [DimCut(d["count"], d["values"]) for d in s.extra_dims],
        )
        for s in cut
    ]
    runner = StagedRunner(eager, torch_stage_calls([s.module for s in cut]), cut_final)
    # Every calibration image, each run alone at its own counts: the mean over a handful of images
    # was off by 15 % for ATS (4.09 GMACs from 4 noise images vs 3.56 on 64 photos).
    gmacs = count_gmacs_staged(runner, images)
    sequence: list[float] = [spec.num_tokens] + [b.mean for b in boundaries]
    if missed:
        where = ", ".join(f"{i} ({c.min()}..{c.max()})" for i, c in missed)
        near = ", ".join(str(int(np.percentile(c, 90))) for _, c in missed)
        warnings.append(
            f"most calibration images have more tokens than every --buckets value {explicit} after stage(s) {where}: "
            f"those batches run unbucketed at their own count; add buckets near {near} or use --buckets auto"
        )
    if boundaries and all(b.min == spec.num_tokens for b in boundaries):
        warnings.append(
            f"no token was dropped on any of the {len(images)} calibration images: the bundle runs the dense "
            "amount of work. Adaptive methods need their trained weights (A-ViT's fine-tuned channel 0, see "
            "methods-reference §4.3) or other method parameters (--beta, --max-tokens)."
        )
    for text in warnings:
        logger.warning("WARNING: %s", text)
    logger.info(
        "calibrate: %d images (%s); mean tokens %s; %.3f GMACs per image",
        len(images),
        plan.record["source"],
        " → ".join(map(str, sequence)),
        gmacs,
    )
    calibration = {**plan.record, "gmacs_images": int(len(images)), "profile": profile.name if profile else None}
    tokens = TokensRecord(
        sequence, boundaries=boundaries, calibration=calibration, warnings=[*plan.warnings, *warnings]
    )
    return Calibration(buckets, tokens, gmacs)
