"""Write a Triton Inference Server model repository from a bundle (server-side staging).

One model: Triton's Python backend runs model.py, which loads the bundle copied into the
repository with tokcompile.load (sha256 of every file checked) and runs the same staged runner
as in-process, with dynamic batching. Clients send images (client.py is a plain tritonclient
example). Serve it with 'tokcompile serve REPO' (nvidia-pytriton's tritonserver) or
'tritonserver --model-repository REPO' where tokcompile is installed. The repository is written
to a temporary folder and renamed into place; --force replaces only a repository tokcompile
wrote.

Example:
  tokcompile export-triton deit_s-evit-fp16 models/
  tokcompile export-triton deit_s-ats-fp32 models/ --name deit_ats --max-batch 8 --instances 2 --force
"""

from __future__ import annotations

import argparse

from .serve import add_batching_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("repo", help="model repository directory to write")
    add_batching_arguments(p)
    p.add_argument("--force", action="store_true", help="replace REPO if tokcompile wrote it")


def run(args: argparse.Namespace) -> bool:
    from ..deploy.triton import triton_repo_from_bundle

    record = triton_repo_from_bundle(
        args.bundle,
        args.repo,
        force=args.force,
        name=args.name,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances,
    )
    print(f"model: {record['model']}")
    print(f"repository: {args.repo}")
    return True
