"""Example client for a bundle served by Triton (``tokcompile serve``, or a repository written by
``tokcompile export-triton``; copied there as ``client.py``).

The server runs the whole model, staging included: a request is a batch of images, the answer
is their logits and features. This file needs numpy and ``tritonclient[http]`` only.

    pip install "tritonclient[http]"
    python client.py images.npy --url localhost:8000           # float32 [B, 3, H, W], preprocessed
    python client.py --random 2 --url localhost:8000           # random images of the model's shape
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

MARKER = "tokcompile-repository.json"  # beside this file in an exported repository: names the model


def infer(client: Any, model: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """One request: ``images`` float32 [B, 3, H, W] → every output (logits, features) [B, ...]."""
    import tritonclient.http as http

    tensor = http.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    result = client.infer(model, [tensor])
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def default_model() -> Optional[str]:
    marker = Path(__file__).with_name(MARKER)
    return json.loads(marker.read_text())["model"] if marker.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", help=".npy file with float32 images [B, 3, H, W]")
    parser.add_argument("--url", default="localhost:8000", help="Triton HTTP endpoint (default localhost:8000)")
    parser.add_argument("--model", default=default_model(), help="model name (default: this repository's model)")
    parser.add_argument("--random", type=int, default=0, help="send this many random images instead of a file")
    args = parser.parse_args()
    try:
        import tritonclient.http as http
    except ImportError as exc:
        raise SystemExit(f"client.py needs tritonclient: pip install 'tritonclient[http]' ({exc})") from None
    if not args.model:
        raise SystemExit("client.py: pass --model NAME (no tokcompile-repository.json beside this file)")
    client = http.InferenceServerClient(url=args.url)
    if args.random:
        shape = client.get_model_metadata(args.model)["inputs"][0]["shape"][1:]
        images = np.random.default_rng(0).standard_normal((args.random, *shape), dtype=np.float32)
    elif args.images:
        images = np.load(args.images).astype(np.float32)
    else:
        raise SystemExit("client.py: pass an .npy file of images or --random N")
    outputs = infer(client, args.model, images)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}")
    print("top-1:", outputs["logits"].argmax(axis=1).tolist())


if __name__ == "__main__":
    main()
