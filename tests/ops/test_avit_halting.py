"""ops/avit_halting.py: A-ViT's halting step, block after block, against the official recurrences.

The oracle is methods-reference §4.2 the way the official code (and ``tests/reference_avit.py``)
writes it, dense and in float64, for every token: h = sigmoid(γ·y₀ − β) (1 in the last block),
c += h, out += y·(R where c reached 1 − ε, h while running), R −= h while running. The op keeps
the CLS's R and out only (the classifier reads the ponder-weighted CLS) and marks which tokens
stay: those still running in an image whose CLS runs, and CLS always.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokcompile.ops.avit_halting import avit_init, avit_update, gather_c, ponder_tokens

GAMMA, BETA, EPS = 10.0, 3.0, 0.01
ATOL = 1e-5  # float32 state over 6 steps vs float64


def official_steps(ys: list[np.ndarray], gamma: float, beta: float, eps: float) -> list[dict[str, np.ndarray]]:
    """Per block: c [B, N], and the CLS's R [B], out [B, C], halted [B], after it (float64)."""
    B, N, C = ys[0].shape
    c, R, out = np.zeros((B, N)), np.ones((B, N)), np.zeros((B, N, C))
    active = np.ones((B, N), dtype=bool)
    steps = []
    for i, y in enumerate(ys):
        y = y.astype(np.float64)
        h = 1.0 / (1.0 + np.exp(-(gamma * y[:, :, 0] - beta))) if i < len(ys) - 1 else np.ones((B, N))
        c = c + h
        reached = (c > 1 - eps) & active
        running = c < 1 - eps
        out = out + y * (R * reached + h * running)[..., None]
        R = R - h * running
        active = running
        steps.append({"c": c.copy(), "R": R[:, 0].copy(), "out": out[:, 0].copy(), "running": running.copy()})
    return steps


@pytest.mark.parametrize("seed", [0, 1])
def test_steps_follow_the_official_recurrence(seed: int) -> None:
    B, N, C, depth = 5, 23, 6, 6
    g = torch.Generator().manual_seed(seed)
    # channel 0 near N(0.3, 0.5²): tokens halt after a few blocks, at different depths
    ys = [torch.randn(B, N, C, generator=g) * 0.5 + 0.3 for _ in range(depth)]
    reference = official_steps([y.numpy() for y in ys], GAMMA, BETA, EPS)
    c, R, out, done = avit_init(ys[0])
    assert (c.shape, R.shape, out.shape, done.shape) == ((B, N), (B,), (B, C), (B,))
    valid = torch.ones(B, N, dtype=torch.bool)
    halted_some = False
    for i, (y, ref) in enumerate(zip(ys, reference)):
        c, R, out, done, keep = avit_update(y, c, R, out, done, valid, GAMMA, BETA, 1 - EPS, i == depth - 1)
        np.testing.assert_allclose(c.numpy(), ref["c"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(R.numpy(), ref["R"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(out.numpy(), ref["out"], atol=ATOL, rtol=0)
        cls_running = ref["running"][:, 0]
        assert done.tolist() == (~cls_running).tolist(), i
        expected_keep = ref["running"] & cls_running[:, None]
        expected_keep[:, 0] = True
        assert keep.tolist() == expected_keep.tolist(), i
        halted_some |= bool((~expected_keep).any())
    assert halted_some and done.all()  # the case halts tokens, and the last block halts everything


def test_padded_tokens_never_accumulate() -> None:
    """c of a padded position stays as it was, and a padded position is never kept."""
    y = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(3))
    c, R, out, done = avit_init(y)
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    c, *_, keep = avit_update(y, c, R, out, done, valid, GAMMA, -5.0, 1 - EPS, False)  # β -5: h ≈ 1
    assert (c[1, 4:] == 0).all() and (c[1, :4] > 0).all() and not keep[1, 4:].any()


def test_gather_and_ponder_tokens() -> None:
    c = torch.arange(12.0).reshape(2, 6)
    rows = torch.tensor([[0, 2, 5], [1, 1, 0]])
    np.testing.assert_array_equal(gather_c(c, rows).numpy(), np.take_along_axis(c.numpy(), rows.numpy(), 1))
    out = torch.randn(3, 5)
    tokens = ponder_tokens(out, torch.zeros(1, dtype=torch.float16))
    assert tokens.shape == (3, 1, 5) and tokens.dtype == torch.float16
    torch.testing.assert_close(tokens[:, 0].float(), out, atol=1e-2, rtol=1e-3)
