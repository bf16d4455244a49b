"""How often ATS's float32 / exact-integer arithmetic keeps another token set than §3.2 in float64.

``tokcompile::ats_sample`` computes in float32 and exact int64 (no float64, which TensorRT lacks;
no floating-point reduction a backend could reorder; ``tokcompile/ops/ats_sample.py``). This
runs the ATS GraphModule (``--method ats`` defaults: every block from the 4th on) over real
photographs, records every ``ats_sample`` call's inputs and result, and recomputes each image's
selection with ``ats_sample_float64_one`` (methods-reference.md §3.2, every sum in float64) on
the SAME inputs, so only the op's arithmetic differs. Per ATS layer it prints the images whose
kept set differs, and the tokens in the symmetric difference. For scale, the last column does
the same for §3.2 written naively in float32 (torch's float32 sums and cumsum, float32 cdfn):
what a float32 body without the op's exact integers would flip.

No pretrained weights are reachable here, so the models have random weights whose q/k
projections are scaled by ``--qk-scale`` (default 4, as tests/conftest.py QK_SHARPEN): plain
random attention is so flat that ATS keeps almost every token. ``--weights PATH`` takes a real
checkpoint (safetensors, or torch.load(weights_only=True)) instead.

    python benchmarks/ats_fp32_selection.py                         # deit_s and deit_t, 200 images
    python benchmarks/ats_fp32_selection.py --models deit_t --precision fp16
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from tokcompile.data.images import image_batches, preprocessing
from tokcompile.methods import adapt_checkpoint, apply_method, get_method, resolve_config
from tokcompile.models import create_model
from tokcompile.ops.ats_sample import ats_sample, ats_sample_float64_one
from tokcompile.passes.names import TOKEN_OP_KEY


def batches(images: str, spec: Any, batch: int, limit: int | None) -> Any:
    return image_batches(images, preprocessing(spec.name, spec.input_shape), batch, limit=limit)


SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"


def plain_float32_one(attn: torch.Tensor, v: torch.Tensor, num_samples: int) -> torch.Tensor:
    """§3.2 for one unpadded image in plain float32 (the naive port): rows [count] int64."""
    cls = torch.zeros(1, dtype=torch.int64)
    if attn.shape[-1] == 1:
        return cls
    s = attn[:, 1:].float().sum(dim=0) * v[:, 1:].float().square().sum(dim=(0, 2)).sqrt()
    order = torch.sort(s, stable=True).indices
    cdf = (s / s.sum())[order].cumsum(dim=0)
    span = cdf[-1] - cdf[0]
    if not span > 0:
        return torch.cat([cls, order + 1])
    cdfn = (cdf - cdf[0]) / span
    y0 = cdfn[cdfn > 0].min()
    y = y0 + (1 - y0) * (torch.arange(num_samples, dtype=torch.float32) / max(num_samples - 1, 1))
    picks = (y[:, None] - cdfn[None, :]).abs().argmin(dim=1)
    return torch.cat([cls, order[torch.unique(picks)] + 1])


class _Tap(fx.Interpreter):
    """Runs the GraphModule and keeps (layer, attn, v, valid, M, rows, count) of every ats_sample."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.calls: list[tuple[Any, ...]] = []

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op == "call_function" and n.target is ats_sample:
            attn, v, valid, num_samples = (self.env[a] if isinstance(a, fx.Node) else a for a in n.args)
            self.calls.append((n.meta.get(TOKEN_OP_KEY), attn, v, valid, num_samples, *out))
        return out


def measure(name: str, args: argparse.Namespace) -> None:
    model, spec, _, _ = create_model(name, weights=args.weights, seed=0, checkpoint_adapter=adapt_checkpoint)
    if args.weights == "random":
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.qkv.weight[: 2 * spec.embed_dim] *= args.qk_scale
                if blk.attn.qkv.bias is not None:
                    blk.attn.qkv.bias[: 2 * spec.embed_dim] *= args.qk_scale
    method = get_method("ats")
    gm, _ = apply_method(model, spec, method, resolve_config(method, spec, {}), args.precision)
    images = 0
    differ: dict[int, int] = defaultdict(int)
    tokens_off: dict[int, int] = defaultdict(int)
    kept: dict[int, int] = defaultdict(int)
    seen: dict[int, int] = defaultdict(int)
    naive: dict[int, int] = defaultdict(int)
    with torch.no_grad():
        for batch in batches(args.images, spec, args.batch, args.limit):
            tap = _Tap(gm)
            tap.run(torch.from_numpy(batch))
            images += batch.shape[0]
            for layer, attn, v, valid, num_samples, rows, count in tap.calls:
                for b in range(batch.shape[0]):
                    c = int(valid[b].sum())
                    ours = set(rows[b, : int(count[b])].tolist())
                    ref = set(ats_sample_float64_one(attn[b, :, :c], v[b, :, :c], num_samples).tolist())
                    naive[layer] += set(plain_float32_one(attn[b, :, :c], v[b, :, :c], num_samples).tolist()) != ref
                    seen[layer] += 1
                    kept[layer] += len(ours)
                    differ[layer] += ours != ref
                    tokens_off[layer] += len(ours ^ ref)
    print(f"{name} ({args.weights} weights, qk x{args.qk_scale}, {args.precision}), {images} images:")
    print(
        "| ATS layer | images | kept tokens (mean) | kept set differs from float64 | tokens in the difference "
        "| naive float32 differs |"
    )
    print("|---|---|---|---|---|---|")
    for layer in sorted(seen):
        print(
            f"| {layer} | {seen[layer]} | {kept[layer] / seen[layer]:.1f} | {differ[layer]} "
            f"({100 * differ[layer] / seen[layer]:.2f} %) | {tokens_off[layer]} | {naive[layer]} |"
        )
    total, flips = sum(seen.values()), sum(differ.values())
    print(
        f"all layers: {flips} of {total} image-layers differ ({100 * flips / total:.3f} %); "
        f"naive float32: {sum(naive.values())}\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="deit_s,deit_t")
    p.add_argument("--images", default=str(SAMPLE))
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--weights", default="random", help="random (q/k sharpened) or a checkpoint path")
    p.add_argument("--qk-scale", type=float, default=4.0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    args = p.parse_args()
    torch.manual_seed(0)
    for name in args.models.split(","):
        measure(name, args)


if __name__ == "__main__":
    main()
