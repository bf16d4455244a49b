"""Write a Triton Inference Server model repository from a bundle.

One model per stage file (TensorRT bundles: platform tensorrt_plan with every optimization
profile listed; ONNX Runtime bundles: onnxruntime_onnx), plus pipeline.json, client.py (the
stage loop with bucket padding, which staged bundles need) and a README with the server command
and plugin preload. The repository is written to a temporary folder and renamed into place.

Example:
  tokcompile export-triton deit_s-evit-fp16 models/
  tokcompile export-triton deit_s-ats-fp16 models/ --name deit_ats --force
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("repo", help="model repository directory to write")
    p.add_argument("--name", default=None, help="model name (default: the bundle directory's name)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="max_batch_size of every model (default: the engines' profiles; 16 for ONNX models)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing REPO")


def run(args: argparse.Namespace) -> bool:
    from ..export.triton import triton_repo_from_bundle

    pipeline = triton_repo_from_bundle(
        args.bundle, args.repo, force=args.force, name=args.name, max_batch_size=args.max_batch_size
    )
    for stage in pipeline["stages"]:
        print(f"model: {stage['model']}")
    print(f"repository: {args.repo}")
    return True
