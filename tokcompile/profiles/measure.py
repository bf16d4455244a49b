"""Measure a profile curve: latency of one timm ViT block versus token count, on this machine.

The block (pre-norm attention + MLP, mlp_ratio 4, random weights) is exported once to ONNX with a
dynamic token dimension and timed with ONNX Runtime at each token count (median of ``iters`` runs
after a warm-up). This is the same runtime the CPU bundles use, so the curve prices buckets the
way bundles will run them.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import Curve

logger = logging.getLogger(__name__)


def _block_onnx(width: int, heads: int, path: Path) -> None:
    from timm.models.vision_transformer import Block

    block = Block(width, heads, mlp_ratio=4.0, qkv_bias=True).eval()
    tokens = torch.export.Dim("tokens", min=2, max=4096)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        block,
        (torch.zeros(2, 16, width),),
        str(path),
        dynamo=True,
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes=({0: batch, 1: tokens},),
        verbose=False,
    )


def measure_curve(
    width: int, heads: int, batch: int, tokens: Sequence[int], iters: int = 5, threads: int | None = None
) -> Curve:
    from ..backends.onnxruntime import OrtRunner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.onnx"
        _block_onnx(width, heads, path)
        runner = OrtRunner(path, threads)
        rng = np.random.default_rng(0)
        latencies = []
        for n in tokens:
            x = rng.standard_normal((batch, n, width), dtype=np.float32)
            runner.session.run(None, {"x": x})
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                runner.session.run(None, {"x": x})
                times.append(time.perf_counter() - start)
            latencies.append(round(float(np.median(times)) * 1e3, 4))
            logger.debug("profile: width %d batch %d tokens %d: %.3f ms", width, batch, n, latencies[-1])
    logger.info(
        "profile: width %d, batch %d: %d points, %.2f → %.2f ms", width, batch, len(tokens), latencies[0], latencies[-1]
    )
    return Curve(width, heads, batch, list(map(int, tokens)), latencies)


def cpu_target() -> dict:
    import os

    try:
        import cpuinfo  # py-cpuinfo, optional

        brand = cpuinfo.get_cpu_info().get("brand_raw", platform.processor())
    except Exception:
        brand = platform.processor() or platform.machine()
    return {"kind": "cpu", "description": brand, "machine": platform.machine(), "cores": os.cpu_count()}
