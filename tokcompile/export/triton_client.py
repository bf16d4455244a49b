"""Client-side staging for a Triton repository written by ``tokcompile export-triton``.

This file is copied verbatim into the repository as ``client.py`` (it imports numpy only, and
``tritonclient`` when talking to a server). ``pipeline.json`` beside it lists the stage models.

Why client-side: after a stage whose token count depends on the image, the next stage must run
on the smallest bucket ≥ the batch's largest count, with every token tensor cut or padded to it.
A Triton ensemble wires outputs to inputs unchanged and cannot cut or pad a tensor between steps,
so the loop below does it, exactly as ``tokcompile.load(bundle)`` does in-process:

    for each stage:   run it on the values it reads (stage 0 reads the images)
                      if it ends in a count: bucket = smallest bucket ≥ max(count) (or max(count)
                      itself above every bucket) and cut/pad its token outputs to the bucket
    return the model outputs (logits, features, kept ids, counts) by name

Padding: False for masks, -1 for ids, 0 for tokens (the stages mask padded tokens).

Usage against a running server (``pip install tritonclient[http]``)::

    python client.py images.npy --url localhost:8000     # images: float32 [B, 3, H, W]
"""

from __future__ import annotations

import argparse
import bisect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# infer(model name, {input name: array}, [output names]) -> arrays in that order, with the shapes
# the ONNX/engine file has (the Triton adaptor below undoes config reshapes).
Infer = Callable[[str, dict[str, np.ndarray], list[str]], list[np.ndarray]]


def pick_bucket(count: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ≥ count; a count above every bucket runs at its own size."""
    i = bisect.bisect_left(list(buckets), count)
    return int(buckets[i]) if i < len(buckets) else int(count)


def fit_tokens(value: np.ndarray, n: int) -> np.ndarray:
    """Cut or pad dim 1 to n: padding is False (masks), -1 (ids) or 0 (tokens)."""
    have = value.shape[1]
    if have >= n:
        return np.ascontiguousarray(value[:, :n])
    fill = False if value.dtype == np.bool_ else -1 if np.issubdtype(value.dtype, np.integer) else 0
    pad = np.full((value.shape[0], n - have, *value.shape[2:]), fill, dtype=value.dtype)
    return np.concatenate([value, pad], axis=1)


def run_pipeline(images: np.ndarray, infer: Infer, pipeline: dict[str, Any]) -> dict[str, np.ndarray]:
    """All model outputs for ``images`` [B, 3, H, W] float32, stage by stage."""
    values: dict[str, np.ndarray] = {}
    for i, stage in enumerate(pipeline["stages"]):
        feed = {
            name: images if i == 0 and j == 0 else values[value]
            for j, (name, value) in enumerate(zip(stage["inputs"], stage["values_in"]))
        }
        values.update(zip(stage["outputs"], infer(stage["model"], feed, list(stage["outputs"]))))
        if stage.get("count"):
            bucket = pick_bucket(int(values[stage["count"]].max()), stage.get("buckets") or [])
            for name in stage["token_values"]:
                if name in stage["outputs"]:
                    values[name] = fit_tokens(values[name], bucket)
    return {name: values[value] for name, value in pipeline["final_outputs"].items()}


def triton_infer(url: str, pipeline: dict[str, Any]) -> Infer:
    """An ``Infer`` that sends each stage to a Triton server over HTTP."""
    try:
        import tritonclient.http as http  # type: ignore[import-not-found]
        from tritonclient.utils import np_to_triton_dtype  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SystemExit(f"client.py needs tritonclient: pip install 'tritonclient[http]' ({exc})") from None
    client = http.InferenceServerClient(url=url)
    # Tensors that are [batch] in the model are [batch, 1] in the config (Triton needs dims ≠ []).
    reshaped = {m["model"]: set(m.get("reshaped", [])) for m in pipeline["stages"]}

    def infer(model: str, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        inputs = []
        for name, array in feed.items():
            array = np.ascontiguousarray(array[:, None] if name in reshaped[model] else array)
            tensor = http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer(model, inputs, outputs=[http.InferRequestedOutput(n) for n in outputs])
        arrays = [result.as_numpy(n) for n in outputs]
        return [a.reshape(a.shape[0]) if n in reshaped[model] else a for n, a in zip(outputs, arrays)]

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help=".npy file with float32 images [B, 3, H, W]")
    parser.add_argument("--url", default="localhost:8000", help="Triton HTTP endpoint (default localhost:8000)")
    args = parser.parse_args()
    pipeline = json.loads((Path(__file__).parent / "pipeline.json").read_text())
    outputs = run_pipeline(np.load(args.images).astype(np.float32), triton_infer(args.url, pipeline), pipeline)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}")
    print("top-1:", outputs["logits"].argmax(axis=1).tolist())


if __name__ == "__main__":
    main()
