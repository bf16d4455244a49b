"""Optimization profiles of a stage's engine, planned from the manifest and the ONNX files alone.

Pure: no TensorRT is imported, so a bundle built on any machine records the profiles
(``tensorrt_plan``) that ``--backend tensorrt`` and ``tensorrt-rtx`` build, and report.md turns
them into trtexec / tensorrt_rtx / polygraphy command lines (DESIGN.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ... import _defaults
from ...manifest import FALLBACK, Profile, StageEntry


def token_inputs(stage: StageEntry) -> list[str]:
    """Inputs of a stage whose dim 1 is the token dimension that buckets fix: dynamic
    (``token_inputs``) and a token value (``token_values``). Other dynamic inputs (AdaViT's
    heads / MLP rows) are not token inputs."""
    tokens, dynamic = set(stage.token_values), set(stage.token_inputs)
    pairs = zip(stage.inputs, stage.values_in)
    return [name for name, value in pairs if name in dynamic and (value in tokens or name in tokens)]


def stage_buckets(stages: Sequence[StageEntry], index: int) -> list[int]:
    """Token counts the runtime feeds stage ``index``: the buckets of the boundary that produced its
    token inputs (``stages[j].buckets``, chosen by calibration for the stage ending in a count).
    Empty when the stage has no token inputs or they come from different boundaries (then only
    the catch-all profile serves it)."""
    stage = stages[index]
    names = set(token_inputs(stage))
    producers: set[int] = set()
    for name, value in zip(stage.inputs, stage.values_in):
        if name in names:
            # -1: not produced by an earlier stage (a model input)
            producers.add(next((j for j in range(index) if value in stages[j].outputs), -1))
    if len(producers) != 1 or -1 in producers:
        return []
    producer = stages[producers.pop()]
    return list(producer.buckets) if producer.count else []


def extra_dim_inputs(stages: Sequence[StageEntry], index: int) -> dict[str, int]:
    """Inputs of stage ``index`` whose dim 1 is an extra data-dependent dim an earlier boundary
    cut to the batch's maximum (AdaViT's kept heads, MLP rows) → that dim's full size."""
    full = {v: d.max for s in stages[:index] for d in s.extra_dims for v in d.values}
    stage = stages[index]
    return {n: full[v] for n, v in zip(stage.inputs, stage.values_in) if v in full}


def stage_profiles(
    input_shapes: Mapping[str, Sequence[int]],
    tokens_of: Sequence[str],
    buckets: Sequence[int],
    full_count: int,
    max_batch: int,
    opt_batch: int,
    extra: Optional[Mapping[str, int]] = None,
) -> list[dict[str, Any]]:
    """Optimization profiles of one stage, in engine order: one per bucket, then the catch-all.

    input_shapes: input name → dims with -1 where dynamic; dim 0 is the batch, dim 1 of
    ``tokens_of`` the token count. Per bucket b: token dim min = opt = max = b. The catch-all
    takes token counts [FALLBACK_MIN_TOKENS, full_count] (a count above every bucket runs at its
    own size). ``extra``: inputs whose dim 1 is another data-dependent dim (not bucketed) → its
    full size; every profile takes it over [1, full size]. Every profile takes batch
    [1, max_batch], optimised for ``opt_batch``. A stage without token inputs has the catch-all
    only. Returns ``[{"bucket": b or "fallback", "shapes": {name: [min, opt, max]}}]`` (lists,
    for the manifest).
    """
    extra = extra or {}
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch}, {max_batch}")
    missing = [n for n in tokens_of if n not in input_shapes]
    if missing:
        raise ValueError(f"token inputs {missing} are not inputs of the network ({list(input_shapes)})")

    def shapes(tokens: Optional[tuple[int, int, int]]) -> dict[str, list[list[int]]]:
        out = {}
        for name, dims in input_shapes.items():
            dims = [int(d) for d in dims]
            token = tokens if name in tokens_of else (1, extra[name], extra[name]) if name in extra else None
            if len(dims) < (2 if token else 1):
                raise ValueError(f"input '{name}' has shape {dims}: no batch/token dimension")
            triple = []
            for i, batch in enumerate((1, opt_batch, max_batch)):
                shape = [batch, *dims[1:]]
                if token:
                    shape[1] = token[i]
                if any(d < 0 for d in shape):
                    raise ValueError(f"input '{name}' has dynamic dimensions beyond batch and tokens: {dims}")
                triple.append(shape)
            out[name] = triple
        return out

    profiles: list[dict[str, Any]] = []
    if tokens_of:
        for b in sorted({int(b) for b in buckets if 1 <= int(b) <= full_count}):
            profiles.append({"bucket": b, "shapes": shapes((b, b, b))})
    low = min(_defaults.TRT_FALLBACK_MIN_TOKENS, full_count)
    profiles.append({"bucket": FALLBACK, "shapes": shapes((low, full_count, full_count))})
    return profiles


def onnx_input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Graph input name → dims of an ONNX file, -1 where symbolic (as TensorRT's parser sees them)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
        for i in model.graph.input
    }


def batch_limits(max_batch: Optional[int] = None) -> tuple[int, int]:
    """(max_batch, opt_batch) of every profile: ``--max-batch`` (default TRT_MAX_BATCH), optimised
    for BUCKET_BATCH or the maximum when that is smaller."""
    max_batch = max_batch or _defaults.TRT_MAX_BATCH
    return max_batch, min(_defaults.BUCKET_BATCH, max_batch)


def plan_profiles(
    directory: Path, stages: Sequence[StageEntry], full_count: int, max_batch: Optional[int]
) -> list[list[Profile]]:
    """Per stage, the profiles a TensorRT build makes from its ONNX file (the manifest's
    ``tensorrt_plan``). ``full_count``: the model's token count (the catch-all profile's maximum).

    Raises ValueError when a stage has dynamic dimensions the profiles do not cover.
    """
    max_batch, opt_batch = batch_limits(max_batch)
    return [
        stage_profiles(
            onnx_input_shapes(directory / stage.file),
            token_inputs(stage),
            stage_buckets(stages, k),
            full_count,
            max_batch,
            opt_batch,
            extra_dim_inputs(stages, k),
        )
        for k, stage in enumerate(stages)
    ]


def pick_profile(profiles: Sequence[Mapping[str, Any]], tokens: Optional[int]) -> int:
    """Index of the profile built for exactly ``tokens`` tokens, else of the catch-all."""
    for i, p in enumerate(profiles):
        if tokens is not None and p["bucket"] == tokens:
            return i
    return next(i for i, p in enumerate(profiles) if p["bucket"] == FALLBACK)


def describe_profile(profile: Mapping[str, Any], full_count: Optional[int] = None) -> str:
    """Words for one planned profile in messages: 'bucket 97' or 'the catch-all profile, tokens 1..197'."""
    if profile["bucket"] != FALLBACK:
        return f"bucket {profile['bucket']}"
    high = f"..{full_count}" if full_count else ""
    return f"the catch-all profile, tokens {_defaults.TRT_FALLBACK_MIN_TOKENS}{high}"


def short_version(version: str) -> str:
    """'10.13.0.35' → '10.13'."""
    return ".".join(version.split(".")[:2])


def engine_file_name(stem: str, tag: str, version: str, target_sm: Sequence[int]) -> str:
    """``stage1``, 'trt', '10.13.0.35', [90] → ``stage1.trt10.13-sm90.engine``; TensorRT for RTX,
    several targets: ``stage1``, 'rtx', '1.7.1.116', [80, 86] → ``stage1.rtx1.7-sm80_86.engine``."""
    return f"{stem}.{tag}{short_version(version)}-sm{'_'.join(str(sm) for sm in sorted(target_sm))}.engine"
