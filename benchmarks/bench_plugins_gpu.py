"""GPU time of the fused token-op kernels against their native-op form, side by side.

The fused form is one launch of the kernel behind each TensorRT plugin (libtokcompile_kernels.so,
extern "C" launchers); the native-op form is the pure-torch reference of the op run on the GPU
(``evit_select_reference``: mean, topk, gather, scatter, bmm, cat; ``ats_sample_reference``:
sums, sort, cumsum, argmin, scatters), i.e. the chain of kernels a graph without the plugin runs.
DeiT-S shapes: H 6, N 197, C 384, hd 64; fp16 tokens / values, fp32 attention row; EViT keep 0.7
with the fused token (k 138), ATS M = 196.

Two timings per case, CUDA events over --iters calls after --warmup calls:
  eager  each call launched from Python (the torch side pays one dispatch per op);
  graph  the same call captured once in a CUDA graph and replayed (GPU time, no launch cost);
         reported as n/a when capture fails.
Before timing, each fused result is checked against the reference (EViT: kept sets; ATS: exact).

    cmake -S . -B build -G Ninja && cmake --build build --target tokcompile_kernels
    python benchmarks/bench_plugins_gpu.py                       # batch 1 and 256
    python benchmarks/bench_plugins_gpu.py --batch 1,64,256 --iters 500
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tokcompile.ops.ats_sample import ats_sample_reference, sample_count
from tokcompile.ops.evit_select import evit_select_reference, keep_count

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "plugins"))
from plugin_build import bind_kernels  # noqa: E402  (the ctypes binding shared with the kernel tests)

HEADS, TOKENS, CHANNELS, HEAD_DIM = 6, 197, 384, 64
KEEP_RATE, NUM_PREFIX, FUSE = 0.7, 1, 1
FLOAT16, BOOL_MASK = 1, 3  # TokcompileDtype codes (plugins/common/tokcompileKernelApi.h)


def checked(lib: ctypes.CDLL, name: str, status: int) -> None:
    if status != 0:
        raise RuntimeError(f"{name}: CUDA error {status} ({lib.tokcompileKernelErrorString(status).decode()})")


def stream() -> int:
    # Read at call time: inside torch.cuda.graph() this is the capturing stream.
    return torch.cuda.current_stream().cuda_stream


def time_ms(fn: Callable[[], object], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def as_graph(fn: Callable[[], object], warmup: int) -> Callable[[], None] | None:
    """fn captured in a CUDA graph (its replay), or None when fn cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            for _ in range(warmup):  # warm the caching allocator and lazy inits off the capture
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception:  # torch raises RuntimeError subclasses; anything else means the same here
        torch.cuda.synchronize()
        return None
    return graph.replay


def evit_case(lib: ctypes.CDLL, batch: int, gen: torch.Generator) -> tuple[Callable, Callable, str]:
    x = torch.randn(batch, TOKENS, CHANNELS, generator=gen).half().cuda()
    attn = (3 * torch.randn(batch, HEADS, TOKENS, generator=gen)).softmax(dim=-1).cuda()
    k = keep_count(KEEP_RATE, TOKENS, NUM_PREFIX)
    out = torch.empty(batch, NUM_PREFIX + k + FUSE, CHANNELS, dtype=x.dtype, device="cuda")
    kept = torch.empty(batch, k, dtype=torch.int64, device="cuda")

    def fused() -> None:
        status = lib.tokcompileEvitSelect(
            x.data_ptr(), attn.data_ptr(), out.data_ptr(), kept.data_ptr(),
            batch, HEADS, TOKENS, CHANNELS, k, NUM_PREFIX, FUSE, FLOAT16, stream(),
        )  # fmt: skip
        checked(lib, "tokcompileEvitSelect", status)

    def native() -> tuple[torch.Tensor, torch.Tensor]:
        return evit_select_reference(x, attn, KEEP_RATE, bool(FUSE), NUM_PREFIX)

    fused()
    _, ref_kept = native()
    torch.cuda.synchronize()
    same = torch.equal(kept.sort(dim=1).values, ref_kept.sort(dim=1).values)
    return fused, native, "kept sets equal" if same else "KEPT SETS DIFFER"


def ats_case(lib: ctypes.CDLL, batch: int, gen: torch.Generator) -> tuple[Callable, Callable, str]:
    attn = (3 * torch.randn(batch, HEADS, TOKENS, generator=gen)).softmax(dim=-1).cuda()
    v = torch.randn(batch, HEADS, TOKENS, HEAD_DIM, generator=gen).half().cuda()
    valid = torch.ones(batch, TOKENS, dtype=torch.bool, device="cuda")
    num_samples = sample_count(TOKENS)
    rows = torch.empty(batch, TOKENS, dtype=torch.int64, device="cuda")
    count = torch.empty(batch, dtype=torch.int64, device="cuda")

    def fused() -> None:
        status = lib.tokcompileAtsSample(
            attn.data_ptr(), v.data_ptr(), valid.data_ptr(), rows.data_ptr(), count.data_ptr(),
            batch, HEADS, TOKENS, HEAD_DIM, num_samples, FLOAT16, BOOL_MASK, stream(),
        )  # fmt: skip
        checked(lib, "tokcompileAtsSample", status)

    def native() -> tuple[torch.Tensor, torch.Tensor]:
        return ats_sample_reference(attn, v, valid, num_samples)

    fused()
    ref_rows, ref_count = native()
    torch.cuda.synchronize()
    same = torch.equal(rows, ref_rows) and torch.equal(count, ref_count)
    return fused, native, "equal to reference" if same else "DIFFERS FROM REFERENCE"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", type=Path, default=REPO / "build" / "libtokcompile_kernels.so")
    p.add_argument("--batch", default="1,256", help="comma-separated batch sizes")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_plugins_gpu: needs a CUDA GPU (torch.cuda is not available)")
    if not args.lib.is_file():
        raise SystemExit(f"bench_plugins_gpu: {args.lib} not found; build it with "
                         "'cmake -S . -B build -G Ninja && cmake --build build --target tokcompile_kernels'")  # fmt: skip
    lib = bind_kernels(args.lib)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    gen = torch.Generator().manual_seed(0)

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, fp16 tokens, DeiT-S shapes")
    header = f"{'op':<12} {'batch':>5} {'mode':>6} {'fused ms':>10} {'native ms':>10} {'native/fused':>13}"
    print(header)
    print("-" * len(header))
    for name, make in (("evit_select", evit_case), ("ats_sample", ats_case)):
        for batch in batches:
            fused, native, verdict = make(lib, batch, gen)
            for mode in ("eager", "graph"):
                if mode == "eager":
                    fused_fn, native_fn = fused, native
                else:
                    fused_fn, native_fn = as_graph(fused, args.warmup), as_graph(native, args.warmup)
                if fused_fn is None or native_fn is None:
                    print(f"{name:<12} {batch:>5} {mode:>6} {'n/a (capture failed)':>36}")
                    continue
                fused_ms = time_ms(fused_fn, args.iters, args.warmup)
                native_ms = time_ms(native_fn, args.iters, args.warmup)
                print(
                    f"{name:<12} {batch:>5} {mode:>6} {fused_ms:>10.4f} {native_ms:>10.4f} {native_ms / fused_ms:>12.2f}x"
                )
            print(f"{'':<12} {batch:>5} check: {verdict}")


if __name__ == "__main__":
    main()
