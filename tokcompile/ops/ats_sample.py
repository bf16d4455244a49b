"""``tokcompile::ats_sample``: ATS inverse-transform token sampling, per image, on a padded batch.

Semantics: methods-reference.md §3.2, the per-image ATS of ``adaptivetokensampling/ATS``
(equal to the official code at batch 1), re-written here from the spec. The official batched
path is NOT followed: it lets padding rows enter the CDF normalisation, which makes an image's
result depend on its batch (§3.6). Here an image's result never depends on its batch.

Tensor contract
---------------
inputs
    attn   [B, H, n] float32  CLS row of the post-softmax attention (query 0 over all n keys,
                              CLS itself at key 0). Padded keys carry weight 0 (the caller masks
                              them; the op masks them again, so their values never matter).
    v      [B, H, n, hd]      values, any float dtype (upcast to float32, exactly).
    valid  [B, n] bool        True for real tokens: a prefix 0..c_b-1 per image, CLS (0) valid.
    num_samples: int          M, the number of inverse-CDF samples, 1 <= M <= 65536.
outputs
    rows   [B, n] int64       CLS (0) first, then the kept token positions in ASCENDING score
                              order, then 0 for every padding slot.
    count  [B] int64          1 + number of unique picks (rows[b, :count[b]] is the result).

n <= 65536 (the exporter's token-dimension bound) and M <= 65536 keep every integer below 2^62.

M: the official code uses M = n_ref - 1 = 196 samples for DeiT at 224, where n_ref is the
token count at the NETWORK input (not the current n). For a token budget K < n_ref the
official code crashes (§3.1); tokcompile defines M = K - 1 then (``sample_count``).

Math (§3.2), per image b with c = c_b valid tokens; only tokens j = 1..c-1 (m = c - 1 of them)
take part, padded positions are excluded everywhere::

    s_j    = (Σ_h attn[h, j]) · || concat_h v[h, j, :] ||_2    summed over heads, not averaged
    order  = STABLE ascending argsort of s                     ties: lower position first
    cdf    = cumsum(s[order]);  cdfn = (cdf - cdf[0]) / (cdf[m-1] - cdf[0])
    y0     = min { cdfn_k : cdfn_k > 0 }
    y_i    = y0 + (1 - y0) · i / T,  T = max(M - 1, 1)         i = 0..M-1
    pick_i = argmin_k |y_i - cdfn_k|                           first index on ties
    keep   = unique(pick), ascending
    rows   = [0] ++ (order[keep] + 1)  (+ zero padding),  count = 1 + |keep|

(§3.2 normalises s by Σ_j s_j first; cdfn does not change under that scaling, so it is skipped.)
The official code left-pads cdfn with zeros to length M when m < M and subtracts the pad from
the argmin; the pad never wins (every y_i >= y0 > 0 is strictly closer to y0 than to 0), so it
only shifts indices and is not reproduced. Consequence: the lowest-scoring token (cdfn 0) is
never selected.

Arithmetic: float32 and exact integers, no float64 (TensorRT has none), no floating-point
reduction (whose order a backend may choose). Every step below is either exact or one
correctly rounded float32 operation, so torch, ONNX Runtime and any backend that rounds its
elementwise Mul/Sqrt and int64 → float32 Cast to nearest compute the same bits, whatever order
they reduce in:

1. Exact sums (``_exact_sum``): Σ_h attn and Σ_{h,d} v² per token. Each term x >= 0 becomes the
   integer floor(x · 2^(40 - e)), e = floor(log2(max term of its sum)) (clamped to [-60, 127]),
   the integers are summed in int64 (exact in any order), and the sum is rounded once to float32
   and scaled back by 2^(e - 40). Terms below 2^(e - 40) are dropped (relative 1e-12).
2. s_j = float32(head_sum_j · sqrt(vsq_j)): one Sqrt and one Mul, each rounded once.
3. The stable sort compares float32 values (exact).
4. Integer weights w_j = floor(s_j · 2^(W - e)), e = floor(log2(max_j s_j)), with the most bits
   the image's own m and T leave: W = 61 - bitlength(m · T) (45 for DeiT's m <= 196, M = 196;
   at least 28), so that w < 2^(W+1) and every product below stays under 2^62. Then
   cdfn_k = E_k / D with E_k = Σ_{1 <= i <= k} w_order[i] (int64, exact) and D = E_{m-1}.
5. Sampling in integers, scaled by D · T: y_i · D · T = A · T + (D - A) · i with A = y0 · D
   = min { E_k > 0 }, and pick_i = argmin_k |A · T + (D - A) · i - T · E_k| (first index on
   ties), all exact int64. So the picks are exact for the integer weights: non-decreasing in i,
   and the lowest token (E_0 = 0) is never picked.

The only departures from §3.2 in real arithmetic are the truncations in steps 1 and 4 (terms
below 2^-40 of a sum's largest, scores below 2^-W of the image's largest); ``ats_sample_float64_one`` is the §3.2
math in float64, and ``benchmarks/ats_fp32_selection.py`` measures how often the kept sets differ.

Tie-breaking and degenerate cases (tokcompile's definitions):
- The official ``torch.sort`` is not stable; here ties in s are broken by position (stable).
  The ONNX body sorts on (score, position) pairs through a pairwise rank, not TopK (whose tie
  order is not portable), so every backend that runs the body orders ties the same way. The
  argmin is two exact reductions (the minimum distance, then the lowest index at it), not ArgMin.
- unique(pick), ascending, is computed as a mask over the sorted slots (a slot is kept when
  some sample picks it), compacted in slot order.
- Degenerate image: m == 0 (only CLS) gives rows [0], count 1. When D == 0 (m == 1, or every
  score 0) the normalisation would divide by zero: the op keeps EVERY valid token instead, CLS
  then all m tokens in stable ascending score order (for all-zero scores: position order),
  count = c.
- All scores equal is not degenerate: cdfn = k/(m-1), so the first token (the lowest in the
  stable order) is dropped and every other one is kept when M >= m - 1.
"""

from __future__ import annotations

import typing

import onnxscript
import torch
from onnxscript import FLOAT, INT32
from onnxscript import opset18 as op

from .. import _defaults
from ..errors import TokcompileError
from .lowering import plugin_attributes

ONNX_DOMAIN = _defaults.ONNX_DOMAIN
ONNX_NAME = "AtsSample"
PLUGIN = True  # plugins/atsSamplePlugin (IPluginV3 AtsSample)
NATIVE = True  # float32 + exact int64 body: --plugins auto lowers it to native TensorRT layers

MAX_COUNT = 65536  # bound on n and M: m · T <= 2^32, so the weights keep W >= 28 bits
SUM_BITS = 40  # fixed point of the exact sums: terms < 2^41, up to 2^22 terms per sum
WEIGHT_BUDGET = 61  # W = 61 - bitlength(m · T): m · T · 2^(W+1) < 2^62
EXP_MIN, EXP_MAX = -60, 127  # clamp of floor(log2(x)): every scale below is a normal float32
_EXP_TABLE = [2.0**k for k in range(EXP_MIN + 1, EXP_MAX + 1)]  # floor(log2 x) = EXP_MIN + #{t <= x}
_POW_OFFSET = 100
_POW2_TABLE = [2.0**k for k in range(-_POW_OFFSET, 128)]  # 2^k = _POW2_TABLE[k + 100], k in [-100, 127]
_BIT_TABLE = [2**k for k in range(63)]  # bitlength(x) = #{t <= x}
_FAR = 2**62  # larger than any distance |Y - T·E| < 2^62


def sample_count(n_ref: int, budget: int | None = None) -> int:
    """M, the number of inverse-CDF samples: K - 1 with K = min(budget, n_ref) (default n_ref).

    n_ref is the token count (CLS included) at the network input, e.g. 197 for DeiT at 224, so
    the official default is 196 whatever the current token count. A budget K < n_ref gives
    M = K - 1 (tokcompile's definition; the official code crashes for K < N).
    """
    k = n_ref if budget is None else min(int(budget), int(n_ref))
    if k < 2:
        raise TokcompileError(f"ATS needs a token budget of at least 2 (CLS + 1), got {k}")
    return k - 1


def _check_num_samples(num_samples: int) -> None:
    if not 1 <= num_samples <= MAX_COUNT:
        raise TokcompileError(f"ats_sample needs 1 <= num_samples <= {MAX_COUNT}, got {num_samples}")


def _check_tokens(n: int) -> None:
    if n > MAX_COUNT:
        raise TokcompileError(f"ats_sample takes at most {MAX_COUNT} tokens, got {n}")


# ----------------------------------------------------------------------------- exact arithmetic


def _exponent(x: torch.Tensor) -> torch.Tensor:
    """floor(log2(x)) of float32 x >= 0 as int64, clamped to [EXP_MIN, EXP_MAX] (EXP_MIN for 0)."""
    e = torch.frexp(x).exponent.long() - 1
    return torch.where(x > 0, e, EXP_MIN).clamp(EXP_MIN, EXP_MAX)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k as float32 for int64 k in [-100, 127], exactly."""
    return torch.tensor(_POW2_TABLE, dtype=torch.float32, device=k.device)[k + _POW_OFFSET]


def _weight_bits(m: torch.Tensor, num_samples: int) -> torch.Tensor:
    """W = 61 - bitlength(m · T) (int64, m's shape): the most bits of weights whose sums, times
    T = max(M - 1, 1), stay below 2^62 (module docstring, step 4)."""
    mt = (m * max(num_samples - 1, 1)).clamp(min=1)
    table = torch.tensor(_BIT_TABLE, dtype=torch.int64, device=m.device)
    return WEIGHT_BUDGET - (mt.unsqueeze(-1) >= table).sum(dim=-1)


def _fixed_point(x: torch.Tensor, dims: tuple[int, ...], bits: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x >= 0 float32 → (floor(x · 2^(bits - e)) int64, e keepdim), e = exponent of max over dims."""
    e = _exponent(x.amax(dim=dims, keepdim=True))
    return torch.floor(x * _pow2(bits - e)).long(), e


def _exact_sum(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Σ x over dims (x >= 0 float32), exact in int64 up to terms below 2^-40 of the largest,
    rounded once to float32: the same bits in any summation order (module docstring, step 1)."""
    q, e = _fixed_point(x, dims, SUM_BITS)
    return q.sum(dim=dims).float() * _pow2(e.squeeze(dims) - SUM_BITS)


def _scores(attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """s = (Σ_h attn) · sqrt(Σ_{h,d} v²): attn [..., H, n], v [..., H, n, hd] → [..., n] float32."""
    head_sum = _exact_sum(attn.float(), (-2,))
    v32 = v.float()
    return head_sum * _exact_sum(v32 * v32, (-3, -1)).sqrt()


# ----------------------------------------------------------------------------- references


def ats_sample_float64_one(attn: torch.Tensor, v: torch.Tensor, num_samples: int) -> torch.Tensor:
    """§3.2 in float64 for one unpadded image: attn [H, n], v [H, n, hd] → rows [count] int64.

    The measure of the op's float32/integer arithmetic (benchmarks/ats_fp32_selection.py),
    not its definition: every sum in float64, scores normalised as §3.2 writes it.
    """
    _check_num_samples(num_samples)
    n = attn.shape[-1]
    cls = torch.zeros(1, dtype=torch.int64)
    if n == 1:
        return cls
    s = attn[:, 1:].double().sum(dim=0) * v[:, 1:].double().square().sum(dim=(0, 2)).sqrt()
    order = torch.sort(s, stable=True).indices
    total = s.sum()
    cdf = (s / total if total > 0 else s)[order].cumsum(dim=0)
    span = cdf[-1] - cdf[0]
    if not span > 0:  # one token, or every score 0: keep every token
        return torch.cat([cls, order + 1])
    cdfn = (cdf - cdf[0]) / span
    y0 = cdfn[cdfn > 0].min()
    t = torch.arange(num_samples, dtype=torch.float64) / max(num_samples - 1, 1)
    y = y0 + (1 - y0) * t
    picks = (y[:, None] - cdfn[None, :]).abs().argmin(dim=1)  # first index on ties
    return torch.cat([cls, order[torch.unique(picks)] + 1])


def ats_sample_reference_one(attn: torch.Tensor, v: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, int]:
    """The op for one unpadded image: attn [H, n], v [H, n, hd] -> (rows [count] int64, count).

    Written for clarity, not speed (Python integers for steps 4-5 of the module docstring).
    """
    _check_num_samples(num_samples)
    n = attn.shape[-1]
    _check_tokens(n)
    cls = torch.zeros(1, dtype=torch.int64)
    if n == 1:
        return cls, 1
    s = _scores(attn[:, 1:], v[:, 1:])  # token j + 1 at index j
    order = torch.sort(s, stable=True).indices
    T = max(num_samples - 1, 1)
    w, _ = _fixed_point(s[order], (0,), WEIGHT_BUDGET - ((n - 1) * T).bit_length())
    cum = [0]
    for weight in w[1:].tolist():
        cum.append(cum[-1] + weight)  # cum[k] = E_k
    D = cum[-1]
    if D == 0:  # one token, or every score 0: keep every token
        return torch.cat([cls, order + 1]), n
    A = min(e for e in cum if e > 0)
    picks = set()
    for i in range(num_samples):
        y = A * T + (D - A) * i
        dist = [abs(y - T * e) for e in cum]
        picks.add(dist.index(min(dist)))  # first index on ties
    rows = torch.cat([cls, order[sorted(picks)] + 1])
    return rows, int(rows.numel())


def ats_sample_reference(
    attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, vectorised; equal per image to ``ats_sample_reference_one`` on its valid prefix.

    Works on all n positions: CLS and padding are "unscored", their sort key is +inf (so they
    sort after every scored token, by position) and their weight is 0. Mirrors the ONNX body
    operation by operation (the same values in every intermediate).
    """
    _check_num_samples(num_samples)
    B, n = valid.shape
    _check_tokens(n)
    dev = attn.device
    pos = torch.arange(n, device=dev)
    scored = valid & (pos > 0)  # [B, n]
    m = scored.sum(dim=1, keepdim=True)  # [B, 1] int64
    s = torch.where(scored, _scores(attn, v), 0.0)  # [B, n]

    order = torch.sort(torch.where(scored, s, torch.inf), dim=1, stable=True).indices  # [B, n] positions
    w, _ = _fixed_point(s, (1,), _weight_bits(m, num_samples))  # padded and CLS weights are 0
    w_sorted = w.gather(1, order)
    cum = w_sorted.cumsum(dim=1) - w_sorted[:, :1]  # E_k: sorted slots >= m add 0
    D = cum[:, -1:]  # [B, 1]
    regular = D > 0
    slot_valid = pos < m  # [B, n]: sorted slot k holds a scored token
    A = torch.where(slot_valid & (cum > 0), cum, _FAR).amin(dim=1, keepdim=True)
    A = torch.where(regular, A, 0)
    T = max(num_samples - 1, 1)
    y = A * T + (D - A) * torch.arange(num_samples, device=dev)  # [B, M]: y_i · D · T

    dist = torch.where(slot_valid.unsqueeze(1), (y.unsqueeze(2) - T * cum.unsqueeze(1)).abs(), _FAR)  # [B, M, n]
    nearest = dist == dist.amin(dim=2, keepdim=True)
    pick = torch.where(nearest, pos, n).amin(dim=2)  # [B, M], first index on ties
    # unique: mark the picked sorted slots, then move slot k to output position cumsum(picked)[k]
    # (1-based, after CLS). Unpicked slots write 0 to position 0, which holds CLS = 0 anyway.
    picked = (pick.unsqueeze(2) == pos).any(dim=1) & slot_valid  # [B, n]
    target = torch.where(picked, picked.long().cumsum(dim=1), 0)
    zeros = torch.zeros(B, n, dtype=torch.int64, device=dev)
    sampled = zeros.scatter(1, target, torch.where(picked, order, 0))
    sampled_count = 1 + picked.sum(dim=1)

    everything = torch.where((pos >= 1) & (pos <= m), torch.cat([zeros[:, :1], order[:, :-1]], dim=1), 0)
    rows = torch.where(regular, sampled, everything)
    count = torch.where(regular.squeeze(1), sampled_count, 1 + m.squeeze(1))
    return rows, count


@torch.library.custom_op("tokcompile::ats_sample", mutates_args=())
def _ats_sample_op(
    attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return ats_sample_reference(attn, v, valid, num_samples)


@_ats_sample_op.register_fake
def _ats_sample_fake(
    attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    B, n = valid.shape
    return attn.new_empty(B, n, dtype=torch.int64), attn.new_empty(B, dtype=torch.int64)


ats_sample = torch.ops.tokcompile.ats_sample.default


# ---------------------------------------------------------------------------------------------
# ONNX: one node AtsSample(attn, v, valid as int32) in domain "tokcompile" calling a model-local
# function whose body is plain ONNX with no data-dependent output shape (n in, n out), float32 and
# int64 only: the exact sums as Floor/Cast/ReduceSum(int64) with power-of-two scales looked up in
# constant tables (Gather; the exponent is a count of table entries <= x), a stable sort as a
# pairwise (score, position) rank (Less/Equal/And/Or + ReduceSum + ScatterElements), int64
# CumSum, ReduceMin, and ScatterElements without reduction whose indices are never longer than
# their data (the picked-slot mask is an Equal + ReduceMax over [B, M, n], not a scatter of M
# picks into n slots, which TensorRT's builder rejects when M > n). No Slice/Range/Expand (each
# 13-30 int64 layers in TensorRT's parser): positions and 0..M-1 are cumulative sums.
# The TensorRT ONNX parser inlines the body unless the node carries the plugin attributes
# (--plugins on, ops/lowering.py) and a plugin AtsSample is registered in that namespace.


def onnx_function(opset_version: int) -> onnxscript.values.OnnxFunction:
    """The function body for the node, with ``default_opset`` equal to the model's opset."""
    if opset_version != 18:
        raise TokcompileError(f"AtsSample's ONNX body is written for opset 18, not {opset_version}")

    @typing.no_type_check  # onnxscript's DSL: op signatures mypy cannot type (traced, not run)
    @onnxscript.script(onnxscript.values.Opset(ONNX_DOMAIN, 1), default_opset=op)
    def AtsSample(attn: FLOAT, v, valid_mask: INT32, num_samples: int):
        valid = op.Cast(valid_mask, to=9)  # BOOL
        zero = op.Constant(value_ints=[0])
        one = op.Constant(value_ints=[1])
        two = op.Constant(value_ints=[2])
        last = op.Constant(value_ints=[-1])
        heads = op.Constant(value_ints=[1])
        heads_and_channels = op.Constant(value_ints=[1, 3])
        zero_s = op.Constant(value_int=0)
        one_s = op.Constant(value_int=1)
        zero_f = op.Constant(value_float=0.0)
        inf = op.Constant(value_float=float("inf"))
        far = op.Constant(value_int=_FAR)
        exp_table = op.Constant(value_floats=_EXP_TABLE)
        pow2_table = op.Constant(value_floats=_POW2_TABLE)
        exp_min = op.Constant(value_int=EXP_MIN)
        sum_bits = op.Constant(value_int=SUM_BITS + _POW_OFFSET)  # table index of 2^(SUM_BITS - e) is this - e
        unscale = op.Constant(value_int=_POW_OFFSET - SUM_BITS)  # ... and of 2^(e - SUM_BITS) this + e
        bit_table = op.Constant(value_ints=_BIT_TABLE)
        weight_budget = op.Constant(
            value_int=WEIGHT_BUDGET + _POW_OFFSET
        )  # table index of 2^(W - e) is this - bitlength - e

        # Positions 0..n-1 as a [B, n] int64 count (no Shape/Range: n is dynamic) and the scored
        # tokens: valid, not CLS.
        pos = op.Sub(op.CumSum(op.Cast(op.Or(valid, op.Not(valid)), to=7), one_s), one_s)  # [B, n]
        scored = op.And(valid, op.Greater(pos, zero_s))
        m = op.ReduceSum(op.Cast(scored, to=7), one, keepdims=1)  # [B, 1] int64

        # Exact sums (module docstring, step 1): head_sum = Σ_h attn, vsq = Σ_{h,d} v².
        # floor(log2(x)), clamped: EXP_MIN + #{table entries <= x}, the same shape as x.
        attn_max = op.Unsqueeze(op.ReduceMax(attn, heads, keepdims=1), last)  # [B, 1, n, 1]
        attn_e = op.Add(exp_min, op.ReduceSum(op.Cast(op.GreaterOrEqual(attn_max, exp_table), to=7), last, keepdims=0))
        attn_q = op.Cast(op.Floor(op.Mul(attn, op.Gather(pow2_table, op.Sub(sum_bits, attn_e)))), to=7)
        head_sum = op.Mul(
            op.Cast(op.ReduceSum(attn_q, heads, keepdims=0), to=1),
            op.Gather(pow2_table, op.Add(unscale, op.Squeeze(attn_e, heads))),
        )  # [B, n]
        v32 = op.Cast(v, to=1)
        vv = op.Mul(v32, v32)
        vv_max = op.Unsqueeze(op.ReduceMax(vv, heads_and_channels, keepdims=1), last)  # [B, 1, n, 1, 1]
        vv_e = op.Add(exp_min, op.ReduceSum(op.Cast(op.GreaterOrEqual(vv_max, exp_table), to=7), last, keepdims=0))
        vv_q = op.Cast(op.Floor(op.Mul(vv, op.Gather(pow2_table, op.Sub(sum_bits, vv_e)))), to=7)
        vsq = op.Mul(
            op.Cast(op.ReduceSum(vv_q, heads_and_channels, keepdims=0), to=1),
            op.Gather(pow2_table, op.Add(unscale, op.Squeeze(vv_e, heads_and_channels))),
        )  # [B, n]
        s = op.Where(scored, op.Mul(head_sum, op.Sqrt(vsq)), zero_f)  # [B, n]

        # Stable ascending sort: rank[j] = #{j': key[j'] < key[j]} + #{j' < j: key[j'] == key[j]}.
        key = op.Where(scored, s, inf)
        key_j = op.Unsqueeze(key, two)  # [B, n, 1]
        key_other = op.Unsqueeze(key, one)  # [B, 1, n]
        other_earlier = op.Less(op.Unsqueeze(pos, one), op.Unsqueeze(pos, two))  # [B, n, n]: j' < j
        before = op.Or(op.Less(key_other, key_j), op.And(op.Equal(key_other, key_j), other_earlier))
        rank = op.ReduceSum(op.Cast(before, to=7), two, keepdims=0)  # [B, n], a permutation
        zeros = op.Sub(pos, pos)  # [B, n] int64
        order = op.ScatterElements(zeros, rank, pos, axis=1)  # [B, n] positions

        # Integer weights w < 2^(W+1), W = 61 - bitlength(m · T) (step 4), and
        # E_k = Σ_{1 <= i <= k} w[order[i]] (exact int64).
        num = op.Constant(value_int=num_samples)
        T = op.Max(op.Sub(num, one_s), one_s)
        mt = op.Unsqueeze(op.Max(op.Mul(m, T), one_s), last)  # [B, 1, 1]
        bit_length = op.ReduceSum(op.Cast(op.GreaterOrEqual(mt, bit_table), to=7), last, keepdims=0)  # [B, 1]
        s_max = op.Unsqueeze(op.ReduceMax(s, one, keepdims=1), last)  # [B, 1, 1]
        s_e = op.Add(exp_min, op.ReduceSum(op.Cast(op.GreaterOrEqual(s_max, exp_table), to=7), last, keepdims=0))
        w = op.Cast(op.Floor(op.Mul(s, op.Gather(pow2_table, op.Sub(op.Sub(weight_budget, bit_length), s_e)))), to=7)
        w_sorted = op.GatherElements(w, order, axis=1)
        cum = op.Sub(op.CumSum(w_sorted, one_s), op.Gather(w_sorted, zero, axis=1))  # [B, n]
        D = op.ReduceMax(cum, one, keepdims=1)  # [B, 1] = E_{m-1} (later slots add 0)
        regular = op.Greater(D, zero_s)
        slot_valid = op.Less(pos, m)  # [B, n]
        A = op.ReduceMin(op.Where(op.And(slot_valid, op.Greater(cum, zero_s)), cum, far), one, keepdims=1)
        A = op.Where(regular, A, zero_s)

        # y_i · D · T = A · T + (D - A) · i, i = 0..M-1 (step 5); nearest E_k, first index on ties.
        steps = op.Sub(op.CumSum(op.ConstantOfShape(op.Unsqueeze(num, zero), value=[1]), zero_s), one_s)  # [M]: 0..M-1
        y = op.Add(op.Mul(A, T), op.Mul(op.Sub(D, A), steps))  # [B, M]
        dist = op.Abs(op.Sub(op.Unsqueeze(y, two), op.Unsqueeze(op.Mul(cum, T), one)))  # [B, M, n]
        dist = op.Where(op.Unsqueeze(slot_valid, one), dist, far)
        nearest = op.Equal(dist, op.ReduceMin(dist, two, keepdims=1))
        n_big = op.ReduceSum(op.Cast(op.Or(valid, op.Not(valid)), to=7), one, keepdims=1)  # [B, 1] = n
        pick = op.ReduceMin(op.Where(nearest, op.Unsqueeze(pos, one), op.Unsqueeze(n_big, two)), two, keepdims=0)

        # unique, as in torch: mark the picked slots, then scatter slot k to cumsum(picked)[k];
        # unpicked slots write 0 to position 0 (CLS), so no two writes to a position disagree.
        hit = op.Equal(op.Unsqueeze(pick, two), op.Unsqueeze(pos, one))  # [B, M, n]
        picked = op.And(op.Cast(op.ReduceMax(op.Cast(hit, to=6), one, keepdims=0), to=9), slot_valid)
        picked_i = op.Cast(picked, to=7)
        target = op.Where(picked, op.CumSum(picked_i, one_s), zero_s)
        sampled = op.ScatterElements(zeros, target, op.Where(picked, order, zero_s), axis=1)
        sampled_count = op.Add(op.ReduceSum(picked_i, one, keepdims=0), one_s)  # [B]

        # Degenerate images (D == 0): keep every scored token, in sorted order.
        shifted = op.GatherElements(order, op.Max(op.Sub(pos, one_s), zero_s), axis=1)  # order[p - 1]
        in_range = op.And(op.GreaterOrEqual(pos, one_s), op.LessOrEqual(pos, m))
        everything = op.Where(in_range, shifted, zero_s)
        rows = op.Where(regular, sampled, everything)
        count = op.Where(op.Squeeze(regular, one), sampled_count, op.Add(op.Squeeze(m, one), one_s))
        return rows, count

    return AtsSample


def onnx_symbolic(
    attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Export form: emits the ``tokcompile::AtsSample`` node (traced by torch.onnx.export)."""
    _check_num_samples(num_samples)
    B, n = valid.shape
    rows, count = torch.onnx.ops.symbolic_multi_out(
        f"{ONNX_DOMAIN}::{ONNX_NAME}",
        # The mask travels as int32 0/1: TensorRT plugin tensors do not support kBOOL
        # (NvInferRuntimePlugin.h, PluginTensorDesc::type).
        [attn.float(), v, valid.to(torch.int32)],
        {
            "num_samples": int(num_samples),
            **plugin_attributes(PLUGIN, NATIVE),
        },
        dtypes=[torch.int64, torch.int64],
        shapes=[[B, n], [B]],
        version=1,
    )
    return rows, count
