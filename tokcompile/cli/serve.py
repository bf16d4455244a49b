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

from .. import _defaults
from .common import shown


def add_batching_arguments(p: argparse.ArgumentParser) -> None:
    """The entry model's settings, shared with export-triton."""
    p.add_argument("--name", default=None, help="model name (default: the bundle directory's name)")
    p.add_argument(
        "--max-batch",
        "--max-batch-size",
        dest="max_batch",
        type=int,
        default=None,
        help=shown(
            "largest batch (images) of one run and of one request; TensorRT: ≤ the engines' profiles",
            _defaults.TRITON_MAX_BATCH,
        ),
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help=shown("how long the dynamic batcher waits to fill a batch, in µs", _defaults.TRITON_MAX_QUEUE_DELAY_US),
    )
    p.add_argument(
        "--instances",
        type=int,
        default=None,
        help=shown("model instances, one process each", _defaults.TRITON_INSTANCES),
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="BUNDLE", help="bundle directory (or a repository from export-triton)")
    p.add_argument(
        "--host", default=None, help=shown("address to listen on (0.0.0.0: every interface)", _defaults.SERVE_HOST)
    )
    p.add_argument(
        "--http-port",
        "--port",
        dest="http_port",
        type=int,
        default=None,
        help=shown("HTTP port", _defaults.SERVE_HTTP_PORT),
    )
    p.add_argument("--grpc-port", type=int, default=None, help=shown("gRPC port", _defaults.SERVE_GRPC_PORT))
    p.add_argument(
        "--metrics-port", type=int, default=None, help=shown("Prometheus metrics port", _defaults.SERVE_METRICS_PORT)
    )
    add_batching_arguments(p)
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=None,
        help=shown("seconds to wait for the server to load", _defaults.SERVE_READY_TIMEOUT_S),
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
