"""The CUDA kernels against the pure-torch references, on a GPU (marked ``gpu``).

libtokcompile_kernels.so is loaded with ctypes (its extern "C" launchers, see
plugins/*/…Kernel.h) and fed torch CUDA tensors of DeiT-S-like shapes (B 1 and 8, H 6, N 197,
C 384, hd 64; fp32, fp16 and bf16 tokens). References: ``evit_select_reference`` and
``ats_sample_reference`` (tokcompile.ops), run on the same tensors.

EvitSelect: identical kept index sets, kept tokens in non-increasing score order, prefix and
kept rows copied bit for bit, whole output within 1e-5 (fp32) / 1e-2 (fp16) / 5e-2 (bf16) of the
reference. Order is checked against the scores rather than the reference's order because torch's
CUDA mean multiplies by 1/H where the kernel (like torch on CPU) divides by H: scores can differ
by one ulp, which may swap two kept tokens whose scores are that close.

AtsSample: rows and count equal to the reference exactly (both use exact int64 sums and sampling), on
unpadded batches, padded batches with varying valid counts (junk in the padded v), masks with
holes, int32 masks, small sample counts and the degenerate images (only CLS, one token, all-zero
scores, equal scores).

The library comes from $TOKCOMPILE_KERNELS_LIB when set, else it is built in the session's CMake
build directory (conftest.py). Skipped when torch.cuda is unavailable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from plugin_build import bind_kernels

from tokcompile.ops.ats_sample import ats_sample_reference, sample_count
from tokcompile.ops.evit_select import evit_select_reference, keep_count

pytestmark = [pytest.mark.gpu, pytest.mark.slow]  # slow: builds the kernels library (test_build_kernels.py)

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MASK_CODES = {torch.bool: 3, torch.int32: 4}
TOKEN_ATOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}

H, N, C, HD = 6, 197, 384, 64


class Kernels:
    """ctypes binding of libtokcompile_kernels.so; outputs are allocated on the inputs' device."""

    def __init__(self, path: Path | str) -> None:
        self.lib = bind_kernels(path)

    def _check(self, name: str, status: int) -> None:
        if status != 0:
            message = self.lib.tokcompileKernelErrorString(status).decode()
            raise RuntimeError(f"{name} returned CUDA error {status}: {message}")

    @staticmethod
    def _stream(device: torch.device) -> int | None:
        return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None

    def evit_select(
        self, x: torch.Tensor, attn: torch.Tensor, k: int, num_prefix: int, fuse: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, attn = x.contiguous(), attn.float().contiguous()
        B, n, c = x.shape
        out = torch.empty(B, num_prefix + k + fuse, c, dtype=x.dtype, device=x.device)
        kept = torch.empty(B, k, dtype=torch.int64, device=x.device)
        status = self.lib.tokcompileEvitSelect(
            x.data_ptr(), attn.data_ptr(), out.data_ptr(), kept.data_ptr(),
            B, attn.shape[1], n, c, k, num_prefix, fuse, DTYPE_CODES[x.dtype], self._stream(x.device),
        )  # fmt: skip
        self._check("tokcompileEvitSelect", status)
        return out, kept

    def ats_sample(
        self, attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attn, v, valid = attn.float().contiguous(), v.contiguous(), valid.contiguous()
        B, heads, n = attn.shape
        rows = torch.empty(B, n, dtype=torch.int64, device=attn.device)
        count = torch.empty(B, dtype=torch.int64, device=attn.device)
        status = self.lib.tokcompileAtsSample(
            attn.data_ptr(), v.data_ptr(), valid.data_ptr(), rows.data_ptr(), count.data_ptr(),
            B, heads, n, v.shape[-1], num_samples, DTYPE_CODES[v.dtype], MASK_CODES[valid.dtype],
            self._stream(attn.device),
        )  # fmt: skip
        self._check("tokcompileAtsSample", status)
        return rows, count


# ---------------------------------------------------------------------------------------------
# Inputs


def evit_inputs(
    batch: int, dtype: torch.dtype, device: torch.device, seed: int, tokens: int = N
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C] and a post-softmax CLS attention row attn [B, H, N] (spread, like trained ViTs)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, C, generator=gen).to(dtype)
    attn = (3 * torch.randn(batch, H, tokens, generator=gen)).softmax(dim=-1)
    return x.to(device), attn.to(device)


def ats_inputs(
    counts: list[int], dtype: torch.dtype, device: torch.device, seed: int, n: int = N
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """attn [B, H, n] (softmax over each image's valid keys), v [B, H, n, hd], valid [B, n].

    Padded positions of v hold large junk: the kernel must never read them into a score.
    """
    gen = torch.Generator().manual_seed(seed)
    B = len(counts)
    valid = torch.arange(n) < torch.tensor(counts).unsqueeze(1)
    logits = 3 * torch.randn(B, H, n, generator=gen)
    attn = logits.masked_fill(~valid.unsqueeze(1), float("-inf")).softmax(dim=-1)
    v = torch.randn(B, H, n, HD, generator=gen)
    v = torch.where(valid[:, None, :, None], v, 1e3 * torch.randn(v.shape, generator=gen))
    return attn.to(device), v.to(dtype).to(device), valid.to(device)


# ---------------------------------------------------------------------------------------------
# Checks (shared by the tests below; the device is whatever the tensors live on)


def check_evit_select(
    kernels: Kernels, x: torch.Tensor, attn: torch.Tensor, keep_rate: float, fuse: int, num_prefix: int
) -> None:
    B, n, _ = x.shape
    k = keep_count(keep_rate, n, num_prefix)
    assert k < n - num_prefix, "identity case: the export emits no node, the kernel refuses it"
    out, kept = kernels.evit_select(x, attn, k, num_prefix, fuse)
    ref_out, ref_kept = evit_select_reference(x, attn, keep_rate, bool(fuse), num_prefix)
    if x.is_cuda:
        torch.cuda.synchronize()

    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert torch.equal(kept.sort(dim=1).values, ref_kept.sort(dim=1).values), "kept index sets differ"
    scores = attn.float().mean(dim=1)
    kept_scores = scores.gather(1, kept)
    slack = 1e-6 * kept_scores.abs()[:, 1:]
    assert bool((kept_scores[:, :-1] >= kept_scores[:, 1:] - slack).all()), "kept tokens not by descending score"
    # Copies are exact; the fused token is a float32 sum rounded once to x's type.
    assert torch.equal(out[:, :num_prefix], x[:, :num_prefix])
    assert torch.equal(out[:, num_prefix : num_prefix + k], x.gather(1, kept.unsqueeze(-1).expand(B, k, x.shape[2])))
    atol = TOKEN_ATOL[x.dtype]
    if fuse:
        torch.testing.assert_close(out[:, -1].float(), ref_out[:, -1].float(), atol=atol, rtol=0)
    if torch.equal(kept, ref_kept):
        torch.testing.assert_close(out.float(), ref_out.float(), atol=atol, rtol=0)


def check_ats_sample(
    kernels: Kernels, attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, count = kernels.ats_sample(attn, v, valid, num_samples)
    ref_rows, ref_count = ats_sample_reference(attn, v, valid, num_samples)
    if attn.is_cuda:
        torch.cuda.synchronize()
    assert torch.equal(count, ref_count), (count.tolist(), ref_count.tolist())
    assert torch.equal(rows, ref_rows), "rows differ from ats_sample_reference"
    return rows, count


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("torch.cuda is not available (no CUDA GPU here)")
    return torch.device("cuda")


@pytest.fixture(scope="module")
def kernels(device: torch.device, request: pytest.FixtureRequest) -> Kernels:
    prebuilt = os.environ.get("TOKCOMPILE_KERNELS_LIB")
    if prebuilt:
        return Kernels(prebuilt)
    build = request.getfixturevalue("cmake_build")
    build.build("tokcompile_kernels")
    return Kernels(build.path("libtokcompile_kernels.so"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("fuse", [1, 0])
def test_evit_select_matches_reference(kernels: Kernels, device: torch.device, dtype, batch, fuse) -> None:
    x, attn = evit_inputs(batch, dtype, device, seed=batch + 10 * fuse)
    check_evit_select(kernels, x, attn, keep_rate=0.7, fuse=fuse, num_prefix=1)


@pytest.mark.parametrize(
    ("keep_rate", "num_prefix", "tokens"), [(0.5, 1, 197), (0.9, 1, 197), (0.7, 0, 196), (0.7, 5, 201)]
)
def test_evit_select_other_settings(kernels: Kernels, device: torch.device, keep_rate, num_prefix, tokens) -> None:
    x, attn = evit_inputs(8, torch.float16, device, seed=7, tokens=tokens)
    check_evit_select(kernels, x, attn, keep_rate=keep_rate, fuse=1, num_prefix=num_prefix)


def test_evit_select_ties_go_to_the_lower_index(kernels: Kernels, device: torch.device) -> None:
    x, attn = evit_inputs(2, torch.float32, device, seed=3)
    attn = torch.full_like(attn, 1.0 / N)  # every score equal
    _, kept = kernels.evit_select(x, attn, 10, 1, 1)
    assert kept.tolist() == [list(range(1, 11))] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 8])
def test_ats_sample_unpadded(kernels: Kernels, device: torch.device, dtype, batch) -> None:
    attn, v, valid = ats_inputs([N] * batch, dtype, device, seed=batch)
    check_ats_sample(kernels, attn, v, valid, sample_count(N))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ats_sample_padded_batch(kernels: Kernels, device: torch.device, dtype) -> None:
    counts = [197, 150, 101, 60, 37, 10, 3, 2]
    attn, v, valid = ats_inputs(counts, dtype, device, seed=5)
    rows, count = check_ats_sample(kernels, attn, v, valid, sample_count(N))
    # an image's result does not depend on its batch (methods-reference.md §3.6)
    for b, c in enumerate(counts):
        rows_b, count_b = kernels.ats_sample(attn[b : b + 1, :, :c], v[b : b + 1, :, :c], valid[b : b + 1, :c], 196)
        assert int(count_b) == int(count[b])
        assert torch.equal(rows_b[0, : int(count_b)], rows[b, : int(count_b)])


@pytest.mark.parametrize("num_samples", [1, 2, 50, 196, 400])
def test_ats_sample_sample_counts(kernels: Kernels, device: torch.device, num_samples) -> None:
    attn, v, valid = ats_inputs([197, 120, 64, 9], torch.float16, device, seed=num_samples)
    check_ats_sample(kernels, attn, v, valid, num_samples)


def test_ats_sample_masks_with_holes_and_int32_masks(kernels: Kernels, device: torch.device) -> None:
    attn, v, valid = ats_inputs([N] * 4, torch.float32, device, seed=11)
    gen = torch.Generator().manual_seed(12)
    holes = (torch.rand(valid.shape, generator=gen) < 0.3).to(device)
    valid = valid & ~holes
    rows, count = check_ats_sample(kernels, attn, v, valid, 196)
    rows_i, count_i = kernels.ats_sample(attn, v, valid.to(torch.int32), 196)
    assert torch.equal(rows_i, rows) and torch.equal(count_i, count)


def test_ats_sample_degenerate_images(kernels: Kernels, device: torch.device) -> None:
    # only CLS valid, one scored token, two tokens, all scores zero, all scores equal
    attn, v, valid = ats_inputs([1, 2, 3, N, N], torch.float32, device, seed=13)
    attn[3] = 0.0
    attn[4] = 1.0 / N
    v[4] = 1.0
    rows, count = check_ats_sample(kernels, attn, v, valid, 196)
    assert count.tolist()[:2] == [1, 2] and count[3] == N  # degenerate: every valid token is kept
    assert rows[3, :N].tolist() == list(range(N))  # all-zero scores: position order after CLS
    assert count[4] == N - 1  # equal scores: the first token (cdfn 0) is the only one dropped
