"""tokcompile::ats_sample against the per-image ATS semantics (methods-reference.md §3.2).

Two independent numpy transcriptions, sharing no code with ``tokcompile.ops.ats_sample``:

* ``spec_one``: the op's arithmetic exactly (its module docstring, steps 1-5: float32 scores from
  exact int64 sums, integer weights, sampling in Python integers), so the op must equal it bit
  for bit;
* ``section_3_2_one`` (tests/reference_ats.py): §3.2 as written, in float64, including the official left-padding of the
  normalised CDF with zeros to length M (which tokcompile does not reproduce: it checks that the
  padding never wins the argmin). On inputs whose scores are well apart the op selects exactly
  what it selects (how often they differ on real images: benchmarks/ats_fp32_selection.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_ats import section_3_2_one
from torch._subclasses.fake_tensor import FakeTensorMode

from tokcompile.errors import TokcompileError
from tokcompile.ops.ats_sample import (
    ats_sample,
    ats_sample_float64_one,
    ats_sample_reference,
    ats_sample_reference_one,
    sample_count,
)

H, HD = 6, 64
COUNTS_197 = [197, 150, 101, 60, 37, 10, 3, 2]  # valid tokens per image (CLS included)


def make_inputs(
    counts: list[int], n: int, seed: int, heads: int = H, head_dim: int = HD, junk_padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """attn [B, H, n] (softmax over each image's valid keys; padded keys 0), v, valid [B, n]."""
    gen = torch.Generator().manual_seed(seed)
    B = len(counts)
    valid = torch.arange(n) < torch.tensor(counts).unsqueeze(1)
    logits = 3 * torch.randn(B, heads, n, generator=gen)  # spread so scores are far from uniform
    attn = logits.masked_fill(~valid.unsqueeze(1), float("-inf")).softmax(dim=-1)
    v = torch.randn(B, heads, n, head_dim, generator=gen)
    if junk_padding:  # the op must never look at padded values of v
        v = torch.where(valid[:, None, :, None], v, 1e3 * torch.randn(v.shape, generator=gen))
    return attn, v, valid


def _exact_sum(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """Step 1: Σ x (float32 >= 0) as int64 fixed point at 2^(40 - floor(log2 max)), then float32."""
    top = x.max(axis=axis, keepdims=True)
    e = np.clip(np.where(top > 0, np.frexp(top)[1] - 1, -60), -60, 127)
    q = np.floor(x.astype(np.float64) * np.exp2(40.0 - e)).astype(np.int64)  # x · 2^k is exact
    total = q.sum(axis=axis).astype(np.float32)
    return (total * np.exp2(np.squeeze(e, axis) - 40.0).astype(np.float32)).astype(np.float32)


def spec_scores(attn: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Step 2: s_j, j = 1..n-1 of one unpadded image (attn [H, n], v [H, n, hd]), float32."""
    v32 = v[:, 1:].astype(np.float32)
    head = _exact_sum(attn[:, 1:].astype(np.float32), (0,))
    return (head * np.sqrt(_exact_sum(v32 * v32, (0, 2)))).astype(np.float32)


def spec_one(attn: np.ndarray, v: np.ndarray, M: int) -> np.ndarray:
    """Steps 3-5 for one unpadded image → rows [count] (CLS, then kept tokens by ascending score)."""
    s = spec_scores(attn, v)
    m = s.size
    if m == 0:
        return np.zeros(1, dtype=np.int64)
    order = np.argsort(s, kind="stable")
    T = max(M - 1, 1)
    bits = 61 - (m * T).bit_length()
    e = max(-60, int(np.frexp(s.max())[1]) - 1) if s.max() > 0 else -60
    w = [int(np.floor(float(x) * 2.0 ** (bits - e))) for x in s[order]]
    E = [sum(w[1 : k + 1]) for k in range(m)]
    D = E[-1]
    if D == 0:
        return np.concatenate([[0], order + 1])
    A = min(x for x in E if x > 0)
    picks = []
    for i in range(M):
        dist = [abs(A * T + (D - A) * i - T * x) for x in E]
        picks.append(dist.index(min(dist)))
    assert picks == sorted(picks), "exact picks are non-decreasing"
    return np.concatenate([[0], order[np.unique(picks)] + 1])


def check_batch_against_one(attn, v, valid, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, count = ats_sample(attn, v, valid, M)
    assert rows.shape == valid.shape and rows.dtype == torch.int64
    assert count.shape == valid.shape[:1] and count.dtype == torch.int64
    for b, c in enumerate(valid.sum(dim=1).tolist()):
        ref_rows, ref_count = ats_sample_reference_one(attn[b, :, :c], v[b, :, :c], M)
        assert int(count[b]) == ref_count == ref_rows.numel(), b
        assert torch.equal(rows[b, :ref_count], ref_rows), b
        assert not rows[b, ref_count:].any(), "padding slots must be 0"
    return rows, count


# ----------------------------------------------------------------------------- batched == per image


@pytest.mark.parametrize("M", [196, 100, 50, 7, 1])
def test_batched_matches_per_image_reference(M: int) -> None:
    attn, v, valid = make_inputs(COUNTS_197, 197, seed=M)
    rows, count = check_batch_against_one(attn, v, valid, M)
    assert int(count[-1]) == 2  # one non-CLS token: degenerate, kept
    if M > 1:
        assert int(count[0]) > 2  # a real sampling happened
    assert bool((count <= min(M, 196) + 1).all())
    for b, c in enumerate(COUNTS_197):  # and the independent numpy transcription of the op
        expected = spec_one(attn[b, :, :c].numpy(), v[b, :, :c].numpy(), M)
        np.testing.assert_array_equal(rows[b, : int(count[b])].numpy(), expected)


@pytest.mark.parametrize("n", [120, 37, 5])
def test_batched_matches_per_image_reference_smaller_n(n: int) -> None:
    counts = [n, n - 1, max(1, n // 2), 2, 1]
    attn, v, valid = make_inputs(counts, n, seed=n)
    check_batch_against_one(attn, v, valid, 196)


def test_batch_independence() -> None:
    """An image alone (unpadded, n = its count) == inside any padded batch, at any position."""
    attn, v, valid = make_inputs(COUNTS_197, 197, seed=1)
    rows, count = ats_sample(attn, v, valid, 196)
    for b, c in enumerate(COUNTS_197):
        alone_rows, alone_count = ats_sample(attn[b : b + 1, :, :c], v[b : b + 1, :, :c], valid[b : b + 1, :c], 196)
        assert torch.equal(alone_count, count[b : b + 1])
        assert torch.equal(alone_rows[0], rows[b, :c])
    perm = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    rows_p, count_p = ats_sample(attn[perm], v[perm], valid[perm], 196)
    assert torch.equal(rows_p, rows[perm]) and torch.equal(count_p, count[perm])
    # Same batch with 40 more padding positions and junk attention/values in them.
    extra = 40
    attn_x = torch.cat([attn, torch.rand(8, H, extra)], dim=2)
    v_x = torch.cat([v, 1e4 * torch.randn(8, H, extra, HD)], dim=2)
    valid_x = torch.cat([valid, torch.zeros(8, extra, dtype=torch.bool)], dim=1)
    attn_x[:, :, :197] = torch.where(valid.unsqueeze(1), attn, torch.rand(8, H, 197))
    rows_x, count_x = ats_sample(attn_x, v_x, valid_x, 196)
    assert torch.equal(count_x, count) and torch.equal(rows_x[:, :197], rows) and not rows_x[:, 197:].any()


# ----------------------------------------------------------------------------- independent §3.2


@pytest.mark.parametrize(("n", "M", "seed"), [(197, 196, 0), (197, 196, 1), (120, 196, 2), (37, 196, 3), (197, 50, 4)])
def test_matches_both_independent_specs(n: int, M: int, seed: int) -> None:
    """The op's arithmetic bit for bit, and §3.2 in float64 (m < M: the official left padding of
    cdfn with M - m zeros never wins the argmin)."""
    attn, v, valid = make_inputs([n], n, seed=seed)
    rows, count = ats_sample(attn, v, valid, M)
    expected = spec_one(attn[0].numpy(), v[0].numpy(), M)
    assert int(count[0]) == expected.size
    np.testing.assert_array_equal(rows[0, : expected.size].numpy(), expected)
    np.testing.assert_array_equal(section_3_2_one(attn[0].numpy(), v[0].numpy(), M), expected)


@pytest.mark.parametrize(("n", "seed"), [(197, 5), (120, 6), (60, 7)])
def test_official_y_arithmetic_selects_the_same_tokens(n: int, seed: int) -> None:
    """The simplified y_i = y0 + (1 - y0) i/(M-1) picks what the official arithmetic picks here."""
    attn, v, _ = make_inputs([n], n, seed=seed)
    ours = section_3_2_one(attn[0].numpy(), v[0].numpy(), 196)
    official = section_3_2_one(attn[0].numpy(), v[0].numpy(), 196, official_y=True)
    np.testing.assert_array_equal(ours, official)


@pytest.mark.parametrize("M", [196, 50, 7])
def test_float64_reference_is_section_3_2(M: int) -> None:
    """``ats_sample_float64_one`` (the benchmark's measure) against the numpy float64 spec, and the
    op against it: on these inputs (scores well apart) the float32/integer arithmetic flips nothing."""
    for seed in range(6):
        attn, v, valid = make_inputs(COUNTS_197[:6], 197, seed=100 + seed)
        rows, count = ats_sample(attn, v, valid, M)
        for b, c in enumerate(COUNTS_197[:6]):
            reference = ats_sample_float64_one(attn[b, :, :c], v[b, :, :c], M)
            np.testing.assert_array_equal(
                reference.numpy(), section_3_2_one(attn[b, :, :c].numpy(), v[b, :, :c].numpy(), M)
            )
            assert torch.equal(rows[b, : int(count[b])], reference), (seed, b)


def test_lowest_scoring_token_never_selected_and_kept_ascend_by_score() -> None:
    counts = [197, 150, 101, 60, 37, 10, 4, 3]
    for seed in range(4):
        attn, v, valid = make_inputs(counts, 197, seed=10 + seed)
        for M in (196, 50):
            rows, count = ats_sample(attn, v, valid, M)
            for b, c in enumerate(counts):
                s = spec_scores(attn[b, :, :c].numpy(), v[b, :, :c].numpy())  # tokens 1..c-1
                kept = rows[b, 1 : int(count[b])].numpy()
                assert rows[b, 0] == 0 and kept.min() >= 1 and kept.max() < c
                assert len(set(kept.tolist())) == kept.size
                lowest = 1 + int(np.argmin(s))
                assert lowest not in kept
                assert (np.diff(s[kept - 1]) > 0).all(), "kept tokens must ascend by score"


def test_ties_are_broken_by_position() -> None:
    """Exactly tied scores sort by position (stable sort), so selection is deterministic."""
    n = 41
    attn, v, valid = make_inputs([n], n, seed=21, junk_padding=False)
    # Tokens 10..19 all get the score of token 5, tokens 30..39 that of token 25.
    attn[0, :, 10:20] = attn[0, :, 5:6]
    v[0, :, 10:20] = v[0, :, 5:6]
    attn[0, :, 30:40] = attn[0, :, 25:26]
    v[0, :, 30:40] = v[0, :, 25:26]
    rows, count = ats_sample(attn, v, valid, 196)
    expected = spec_one(attn[0].numpy(), v[0].numpy(), 196)
    np.testing.assert_array_equal(rows[0, : int(count[0])].numpy(), expected)
    kept = rows[0, 1 : int(count[0])].tolist()
    for group in ([5, *range(10, 20)], [25, *range(30, 40)]):
        in_group = [t for t in kept if t in group]
        assert in_group == sorted(in_group) and len(in_group) >= 2


# ----------------------------------------------------------------------------- degenerate cases


def test_only_cls() -> None:
    attn, v, valid = make_inputs([1, 1, 5], 5, seed=0)
    rows, count = ats_sample(attn, v, valid, 196)
    assert count.tolist()[:2] == [1, 1] and not rows[:2].any()
    one_rows, one_count = ats_sample_reference_one(attn[0, :, :1], v[0, :, :1], 196)
    assert one_rows.tolist() == [0] and one_count == 1
    rows1, count1 = ats_sample(attn[:1, :, :1], v[:1, :, :1], valid[:1, :1], 196)  # n == 1
    assert rows1.tolist() == [[0]] and count1.tolist() == [1]


def test_single_non_cls_token_is_kept() -> None:
    """m == 1: cdf[-1] == cdf[0] (no division by zero), the one token is kept."""
    attn, v, valid = make_inputs([2, 2, 9], 9, seed=0)
    rows, count = ats_sample(attn, v, valid, 196)
    assert count.tolist()[:2] == [2, 2]
    assert rows[:2].tolist() == [[0, 1] + [0] * 7] * 2


@pytest.mark.parametrize("zero", ["v", "attn"])
def test_all_zero_scores_keep_every_token_in_position_order(zero: str) -> None:
    n = 12
    attn, v, valid = make_inputs([n, 8], n, seed=0)
    if zero == "v":
        v[0] = 0
    else:
        attn[0, :, 1:] = 0
        attn[0, :, 0] = 1
    rows, count = check_batch_against_one(attn, v, valid, 196)
    assert int(count[0]) == n and rows[0].tolist() == list(range(n))
    assert int(count[1]) < 8  # the other image samples normally


def test_all_scores_equal() -> None:
    """s_j = 1/m: cdfn_j = j/(m-1), so y_i lands on cdfn points; ties sort by position."""
    n = 22  # m = 21, cdfn = j/20
    attn = torch.full((1, H, n), 1.0 / n)
    v = torch.ones(1, H, n, HD)
    valid = torch.ones(1, n, dtype=torch.bool)
    # M >= m - 1: every token but the lowest in the stable order (token 1) is kept.
    rows, count = ats_sample(attn, v, valid, 196)
    assert int(count[0]) == n - 1 and rows[0].tolist() == [0, *range(2, n), 0]
    rows, count = ats_sample(attn, v, valid, 20)
    assert int(count[0]) == n - 1 and rows[0].tolist() == [0, *range(2, n), 0]
    # M = 6: y0 = 1/20, y_i = (1 + 3.8 i)/20 → nearest cdfn indices 1, 5, 9, 12, 16, 20.
    rows, count = ats_sample(attn, v, valid, 6)
    assert int(count[0]) == 7 and rows[0, :7].tolist() == [0, 2, 6, 10, 13, 17, 21]
    assert torch.equal(rows[0, :7], ats_sample_reference_one(attn[0], v[0], 6)[0])


def test_lowest_token_never_picked_even_next_to_a_tiny_score() -> None:
    """E_0 = 0 is never the nearest point, exactly: with a second-lowest score of 1e-12 (float32
    cdfn arithmetic could not tell |y_0 - y0| from |y_0 - 0| here) the op still picks y0's token
    and never the lowest one, as §3.2 in float64 does."""
    n = 12
    attn = torch.zeros(1, 1, n)
    attn[0, 0, 0] = 0.5
    attn[0, 0, 1] = 0.0  # lowest: score 0
    attn[0, 0, 2] = 1e-12  # second lowest: y0 ≈ 1e-12 / 0.45
    attn[0, 0, 3:] = 0.05
    v = torch.ones(1, 1, n, 1)
    valid = torch.ones(1, n, dtype=torch.bool)
    rows, count = ats_sample(attn, v, valid, 196)
    kept = rows[0, 1 : int(count[0])].tolist()
    assert kept[0] == 2 and 1 not in kept
    assert kept == ats_sample_float64_one(attn[0], v[0], 196)[1:].tolist()
    np.testing.assert_array_equal(rows[0, : int(count[0])].numpy(), spec_one(attn[0].numpy(), v[0].numpy(), 196))


def test_scores_far_below_the_largest_are_truncated() -> None:
    """Step 4: a score below 2^-W of the image's largest gets weight 0, i.e. ties with the lowest
    token and is never picked (W = 61 - bitlength(m·T) = 49 here); §3.2 in float64 would pick it."""
    n = 12
    attn = torch.zeros(1, 1, n)
    attn[0, 0, 0] = 0.5
    attn[0, 0, 2] = 1e-17  # s_2 / s_max = 2e-16 < 2^-49
    attn[0, 0, 3:] = 0.05
    v = torch.ones(1, 1, n, 1)
    valid = torch.ones(1, n, dtype=torch.bool)
    rows, count = ats_sample(attn, v, valid, 196)
    kept = rows[0, 1 : int(count[0])].tolist()
    assert 1 not in kept and 2 not in kept
    assert ats_sample_float64_one(attn[0], v[0], 196)[1].item() == 2
    np.testing.assert_array_equal(rows[0, : int(count[0])].numpy(), spec_one(attn[0].numpy(), v[0].numpy(), 196))


def test_num_samples_must_be_positive() -> None:
    attn, v, valid = make_inputs([5], 5, seed=0)
    with pytest.raises(TokcompileError, match="num_samples"):
        ats_sample_reference(attn, v, valid, 0)
    with pytest.raises(TokcompileError, match="num_samples"):
        ats_sample_reference_one(attn[0], v[0], 0)
    with pytest.raises(TokcompileError, match="num_samples"):
        ats_sample_reference(attn, v, valid, 65537)


# ----------------------------------------------------------------------------- sample_count (K < N)


def test_sample_count() -> None:
    assert sample_count(197) == 196  # official: n_ref - 1 whatever the current n
    assert sample_count(197, budget=197) == 196
    assert sample_count(197, budget=500) == 196  # K is clipped to n_ref
    assert sample_count(197, budget=108) == 107  # tokcompile's K < N definition
    assert sample_count(101, budget=8) == 7
    with pytest.raises(TokcompileError, match="budget"):
        sample_count(197, budget=1)


# ----------------------------------------------------------------------------- dtype


def test_half_values_are_upcast() -> None:
    attn, v, valid = make_inputs(COUNTS_197[:4], 197, seed=3)
    v16 = v.half()
    rows16, count16 = ats_sample(attn, v16, valid, 196)
    rows32, count32 = ats_sample(attn, v16.float(), valid, 196)
    assert torch.equal(rows16, rows32) and torch.equal(count16, count32)


# ----------------------------------------------------------------------------- fake kernel, opcheck


@pytest.mark.parametrize(("B", "n"), [(4, 197), (1, 37), (3, 1)])
def test_fake_kernel_shapes(B: int, n: int) -> None:
    with FakeTensorMode():
        attn = torch.empty(B, H, n, dtype=torch.float32)
        v = torch.empty(B, H, n, HD, dtype=torch.float16)
        valid = torch.empty(B, n, dtype=torch.bool)
        rows, count = ats_sample(attn, v, valid, 196)
    assert tuple(rows.shape) == (B, n) and rows.dtype == torch.int64
    assert tuple(count.shape) == (B,) and count.dtype == torch.int64


@pytest.mark.parametrize("M", [196, 20])
def test_opcheck(M: int) -> None:
    """torch.library consistency checks, dynamic shapes included (n is symbolic-safe)."""
    attn, v, valid = make_inputs([30, 17, 2], 30, seed=4, head_dim=8)
    torch.library.opcheck(torch.ops.tokcompile.ats_sample.default, (attn, v, valid, M))
