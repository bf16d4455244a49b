"""Serve a bundle on Triton Inference Server (HTTP + gRPC), with dynamic batching.

The bundle becomes one model: input 'images' FP32 [b, 3, H, W], outputs 'logits' and 'features'.
Inside, the same staged runner as tokcompile.load (buckets, split by count, ONNX Runtime or
TensorRT) runs each dynamic batch, so clients send plain images. BUNDLE may also be a
repository written by 'tokcompile export-triton'. The server is the tritonserver of
nvidia-pytriton (pip install 'tokcompile[serve]'). It serves until Ctrl-C or SIGTERM, then
answers the requests in flight, refuses new ones and exits.

Example:
  tokcompile serve deit_s-evit-fp16                       # http://127.0.0.1:8000, gRPC 8001
  tokcompile serve deit_s-ats-fp32 --host 0.0.0.0 --http-port 9000 --grpc-port 9001 --metrics-port 9002
  tokcompile serve deit_s-ats-fp32 --max-batch 8 --max-queue-delay-us 2000 --instances 2
  tokcompile serve models/                                # a repository from export-triton
"""

from __future__ import annotations

import argparse


def add_batching_arguments(p: argparse.ArgumentParser) -> None:
    """The entry model's settings, shared with export-triton."""
    p.add_argument("--name", default=None, help="model name (default: the bundle directory's name)")
    p.add_argument(
        "--max-batch",
        "--max-batch-size",
        dest="max_batch",
        type=int,
        default=None,
        help="largest batch (images) of one run and of one request (default 16; TensorRT: ≤ the engines' profiles)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="how long the dynamic batcher waits to fill a batch, in µs (default 1000)",
    )
    p.add_argument("--instances", type=int, default=None, help="model instances, one process each (default 1)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="BUNDLE", help="bundle directory (or a repository from export-triton)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--http-port", "--port", dest="http_port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default 8002)")
    add_batching_arguments(p)
    p.add_argument(
        "--ready-timeout", type=float, default=None, help="seconds to wait for the server to load (default 300)"
    )


def run(args: argparse.Namespace) -> bool:
    from ..deploy.serve import serve

    serve(
        args.target,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances,
        name=args.name,
        ready_timeout_s=args.ready_timeout,
    )
    return True
