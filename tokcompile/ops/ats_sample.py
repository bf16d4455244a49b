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
    v      [B, H, n, hd]      values, any float dtype (upcast; see "Arithmetic").
    valid  [B, n] bool        True for real tokens: a prefix 0..c_b-1 per image, CLS (0) valid.
    num_samples: int          M, the number of inverse-CDF samples, M >= 1.
outputs
    rows   [B, n] int64       CLS (0) first, then the kept token positions in ASCENDING score
                              order, then 0 for every padding slot.
    count  [B] int64          1 + number of unique picks (rows[b, :count[b]] is the result).

M: the official code uses M = n_ref - 1 = 196 samples for DeiT at 224, where n_ref is the
token count at the NETWORK input (not the current n). For a token budget K < n_ref the
official code crashes (§3.1); tokcompile defines M = K - 1 then (``sample_count``).

Math, per image b with c = c_b valid tokens; only tokens j = 1..c-1 (m = c - 1 of them) take
part, padded positions are excluded everywhere:

    v_norm_j = || concat_h v[h, j, :] ||_2
    s_j      = (Σ_h attn[h, j]) · v_norm_j                  summed over heads, not averaged
    s        = s / Σ_j s_j                                   (s = 0 if Σ_j s_j == 0)
    order    = STABLE ascending argsort of s                 ties: lower position first
    cdf      = cumsum(s[order])
    cdfn     = (cdf - cdf[0]) / (cdf[m-1] - cdf[0])          cdfn[0] == 0
    y0       = min { cdfn_j : cdfn_j > 0 }
    y_i      = y0 + (1 - y0) · t_i,  t_i = i / (M - 1)       i = 0..M-1 (t_0 = 0 when M == 1)
    pick_i   = argmin_j |y_i - cdfn_j|                       first index on ties
    keep     = unique(pick), ascending
    rows     = [0] ++ (order[keep] + 1)  (+ zero padding),  count = 1 + |keep|

The official code left-pads cdfn with zeros to length M when m < M and subtracts the pad from
the argmin; the pad never wins (every y_i >= y0 > 0 is strictly closer to the cdfn point y0
than to 0), so it only shifts indices and is not reproduced. Consequence: the lowest-scoring
token (cdfn 0) is never selected. Both hold as long as float32 can tell y_i - y0 from y_i; it
cannot only when y0 < ulp(y_i) / 2 (a second-lowest normalised score below ~1e-10 with a gap
after it): argmin then takes the first of the tied zeros, here the lowest token, exactly as the
unpadded official code does (the padded official code would pick a pad, an invalid index).

Tie-breaking and degenerate cases (tokcompile's definitions):
- The official ``torch.sort`` is not stable; here ties in s are broken by position (stable).
  The ONNX body sorts on (score, position) pairs through a pairwise rank, not TopK (whose tie
  order is not portable), so every backend that runs the body orders ties the same way.
- unique(pick), ascending, is computed as a mask over the sorted slots (a slot is kept when
  some sample picks it), compacted in slot order. It does not rely on the picks being
  non-decreasing: they are in exact arithmetic, but not always in float32 (in the edge case
  above, y_0 picks y0's slot and y_1 ties back to slot 0), so "keep the picks that differ from
  their predecessor" would be wrong there.
- Degenerate image: m == 0 (only CLS) gives rows [0], count 1. When cdf[m-1] == cdf[0]
  (m == 1, or every score 0) the normalisation would divide by zero: the op keeps EVERY valid
  token instead, CLS then all m tokens in stable ascending score order (for all-zero scores:
  position order), count = c.
- All scores equal is not degenerate: cdfn = j/(m-1), so the first token (the lowest in the
  stable order) is dropped and every other one is kept when M >= m - 1.

Arithmetic: scores are float32 values, but every reduction (Σ_h attn, ||v||², Σ_j s, cumsum)
accumulates in float64 and rounds once to float32, so the result does not depend on the
reduction order of the backend (torch's CPU float32 cumsum already accumulates in double).
Everything else is elementwise float32 in the order written above; torch and the ONNX body
(run by ONNX Runtime) therefore agree bit for bit, and so do their selections. A backend
without float64 (TensorRT, if it inlines the body instead of using a plugin) reduces in float32
and may flip a near-tied pick (methods-reference.md §7.3).
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import FLOAT, INT32
from onnxscript import opset18 as op

from .. import _defaults
from ..errors import TokcompileError
from ._lowering import plugin_attributes

ONNX_DOMAIN = _defaults.ONNX_DOMAIN
ONNX_NAME = "AtsSample"
PLUGIN = True  # plugins/atsSamplePlugin (IPluginV3 AtsSample)
NATIVE = False  # the body accumulates in float64, which TensorRT lacks: --plugins auto uses the plugin


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
    if num_samples < 1:
        raise TokcompileError(f"ats_sample needs num_samples >= 1, got {num_samples}")


def _sample_positions(num_samples: int, device: torch.device) -> torch.Tensor:
    """t_i = i / max(M - 1, 1) in float64, rounded once to float32 (the ONNX body does the same)."""
    steps = torch.arange(num_samples, dtype=torch.float64, device=device)
    return (steps / float(max(num_samples - 1, 1))).float()


def ats_sample_reference_one(attn: torch.Tensor, v: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, int]:
    """One unpadded image: attn [H, n], v [H, n, hd] -> (rows [count] int64, count).

    Written for clarity, not speed; see the module docstring for the math.
    """
    _check_num_samples(num_samples)
    n = attn.shape[-1]
    m = n - 1
    if m == 0:
        return torch.zeros(1, dtype=torch.int64), 1
    # Scores of tokens 1..n-1 (index j here is token j + 1).
    head_sum = attn[:, 1:].double().sum(dim=0).float()
    v_norm = v[:, 1:].double().square().sum(dim=(0, 2)).sqrt().float()
    s = head_sum * v_norm
    total = s.double().sum().float()
    s = s / total if bool(total > 0) else torch.zeros_like(s)
    order = torch.sort(s, stable=True).indices
    cdf = s[order].double().cumsum(dim=0).float()
    span = cdf[m - 1] - cdf[0]
    if not bool(span > 0):  # m == 1 or all scores 0: keep every token
        rows = torch.cat([torch.zeros(1, dtype=torch.int64), order + 1])
        return rows, n
    cdfn = (cdf - cdf[0]) / span
    y0 = cdfn[cdfn > 0].min()
    t = _sample_positions(num_samples, attn.device)
    picks = []
    for i in range(num_samples):
        y_i = y0 + (1 - y0) * t[i]
        picks.append(int(torch.argmin((y_i - cdfn).abs())))  # first index on ties
    keep = torch.unique(torch.tensor(picks, dtype=torch.int64))  # sorted ascending
    rows = torch.cat([torch.zeros(1, dtype=torch.int64), order[keep] + 1])
    return rows, int(rows.numel())


def ats_sample_reference(
    attn: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, vectorised; equal per image to ``ats_sample_reference_one`` on its valid prefix.

    Works on all n positions: CLS and padding are "unscored", their sort key is +inf (so they
    sort after every scored token, by position) and their weight in the cumsum is 0.
    """
    _check_num_samples(num_samples)
    B, n = valid.shape
    dev = attn.device
    pos = torch.arange(n, device=dev)
    scored = valid & (pos > 0)  # [B, n]
    m = scored.sum(dim=1, keepdim=True)  # [B, 1] int64
    zero = torch.zeros((), dtype=torch.float32, device=dev)
    one = torch.ones((), dtype=torch.float32, device=dev)
    inf = torch.full((), float("inf"), dtype=torch.float32, device=dev)

    head_sum = attn.double().sum(dim=1).float()  # [B, n]
    v_norm = v.double().square().sum(dim=(1, 3)).sqrt().float()  # [B, n]
    s = torch.where(scored, head_sum * v_norm, zero)
    total = s.double().sum(dim=1, keepdim=True).float()  # [B, 1]
    has_total = total > 0
    s = torch.where(has_total, s / torch.where(has_total, total, one), zero)

    order = torch.sort(torch.where(scored, s, inf), dim=1, stable=True).indices  # [B, n] positions
    cdf = s.gather(1, order).double().cumsum(dim=1).float()
    slot_valid = pos < m  # [B, n]: sorted slot k holds a scored token
    c0 = cdf[:, :1]
    span = cdf.gather(1, (m - 1).clamp(min=0)) - c0  # [B, 1]
    regular = span > 0
    cdfn = (cdf - c0) / torch.where(regular, span, one)
    y0 = torch.where(slot_valid & (cdfn > 0), cdfn, inf).amin(dim=1, keepdim=True)
    y0 = torch.where(regular, y0, one)
    t = _sample_positions(num_samples, dev)
    y = y0 + (1 - y0) * t  # [B, M]

    dist = torch.where(slot_valid.unsqueeze(1), (y.unsqueeze(2) - cdfn.unsqueeze(1)).abs(), inf)  # [B, M, n]
    pick = dist.argmin(dim=2)  # [B, M], first index on ties
    # unique: mark the picked sorted slots (duplicate writes carry the same value), then move
    # slot k to output position cumsum(picked)[k] (1-based, after CLS). Unpicked slots write 0
    # to position 0, which holds CLS = 0 anyway: no two writes to a position disagree.
    zeros = torch.zeros(B, n, dtype=torch.int64, device=dev)
    picked = zeros.scatter(1, pick, torch.ones_like(pick)).bool() & slot_valid
    target = torch.where(picked, picked.long().cumsum(dim=1), 0)
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
# ONNX: one node AtsSample(attn, v, valid as int32) in domain "tokcompile" calling a model-local function
# whose body is plain ONNX with no data-dependent output shape (n in, n out; n read with Shape):
# Cast (float64 accumulation), ReduceSum, ReduceSumSquare, Sqrt, Mul, Div, Where, a stable sort
# as a pairwise (score, position) rank (Less/Equal/And/Or + ReduceSum + ScatterElements), CumSum,
# GatherElements, ReduceMin, Range, Sub, Abs, ArgMin (select_last_index=0), and for the unique
# picks ScatterElements without reduction (a picked-slot mask, then the compaction) with CumSum
# for the output positions.
# The TensorRT ONNX parser inlines the body unless the node carries the plugin attributes
# (--plugins on|auto, ops/_lowering.py) and a plugin AtsSample is registered in that namespace.


def onnx_function(opset_version: int) -> onnxscript.values.OnnxFunction:
    """The function body for the node, with ``default_opset`` equal to the model's opset."""
    if opset_version != 18:
        raise TokcompileError(f"AtsSample's ONNX body is written for opset 18, not {opset_version}")

    @onnxscript.script(onnxscript.values.Opset(ONNX_DOMAIN, 1), default_opset=op)
    def AtsSample(attn: FLOAT, v, valid_mask: INT32, num_samples: int):
        valid = op.Cast(valid_mask, to=9)  # BOOL
        zero = op.Constant(value_ints=[0])
        one = op.Constant(value_ints=[1])
        two = op.Constant(value_ints=[2])
        heads_and_channels = op.Constant(value_ints=[1, 3])
        zero_s = op.Constant(value_int=0)
        one_s = op.Constant(value_int=1)
        minus_one = op.Constant(value_ints=[-1])
        zero_f = op.Constant(value_float=0.0)
        one_f = op.Constant(value_float=1.0)
        inf = op.Constant(value_float=float("inf"))

        # Positions 0..n-1 (n symbolic) and the scored tokens: valid, not CLS.
        n = op.Squeeze(op.Shape(valid, start=1, end=2), zero)
        pos = op.Range(zero_s, n, one_s)  # [n] int64
        scored = op.And(valid, op.Greater(pos, zero_s))  # [B, n]
        m = op.ReduceSum(op.Cast(scored, to=7), one, keepdims=1)  # [B, 1] int64

        # s = (Σ_h attn) · ||v||, normalised; reductions in float64, rounded once to float32.
        head_sum = op.Cast(op.ReduceSum(op.Cast(attn, to=11), one, keepdims=0), to=1)  # [B, n]
        v_norm = op.Cast(op.Sqrt(op.ReduceSumSquare(op.Cast(v, to=11), heads_and_channels, keepdims=0)), to=1)
        s = op.Where(scored, op.Mul(head_sum, v_norm), zero_f)
        total = op.Cast(op.ReduceSum(op.Cast(s, to=11), one, keepdims=1), to=1)  # [B, 1]
        has_total = op.Greater(total, zero_f)
        s = op.Where(has_total, op.Div(s, op.Where(has_total, total, one_f)), zero_f)

        # Stable ascending sort: rank[j] = #{j': key[j'] < key[j]} + #{j' < j: key[j'] == key[j]}.
        key = op.Where(scored, s, inf)
        key_j = op.Unsqueeze(key, two)  # [B, n, 1]
        key_other = op.Unsqueeze(key, one)  # [B, 1, n]
        other_earlier = op.Less(op.Unsqueeze(pos, zero), op.Unsqueeze(pos, one))  # [n, n]: j' < j
        before = op.Or(op.Less(key_other, key_j), op.And(op.Equal(key_other, key_j), other_earlier))
        rank = op.ReduceSum(op.Cast(before, to=7), two, keepdims=0)  # [B, n], a permutation
        pos_b = op.Expand(pos, op.Shape(rank))
        order = op.ScatterElements(op.Sub(rank, rank), rank, pos_b, axis=1)  # [B, n] positions

        # Normalised CDF over the m sorted scored tokens (unscored slots come after them).
        cdf = op.Cast(op.CumSum(op.Cast(op.GatherElements(s, order, axis=1), to=11), one_s), to=1)
        slot_valid = op.Less(pos, m)  # [B, n]
        c0 = op.Slice(cdf, zero, one, one)  # [B, 1]
        last = op.Max(op.Sub(m, one_s), zero_s)
        span = op.Sub(op.GatherElements(cdf, last, axis=1), c0)  # [B, 1]
        regular = op.Greater(span, zero_f)
        cdfn = op.Div(op.Sub(cdf, c0), op.Where(regular, span, one_f))
        y0 = op.ReduceMin(op.Where(op.And(slot_valid, op.Greater(cdfn, zero_f)), cdfn, inf), one, keepdims=1)
        y0 = op.Where(regular, y0, one_f)

        # y_i = y0 + (1 - y0) · t_i with t_i = i / max(M - 1, 1) in float64, rounded to float32.
        num = op.Constant(value_int=num_samples)
        steps = op.Cast(op.Range(zero_s, num, one_s), to=11)
        t = op.Cast(op.Div(steps, op.Cast(op.Max(op.Sub(num, one_s), one_s), to=11)), to=1)  # [M]
        y = op.Add(y0, op.Mul(op.Sub(one_f, y0), t))  # [B, M]

        # Nearest normalised-CDF point per sample, first index on ties; unscored slots at +inf.
        dist = op.Abs(op.Sub(op.Unsqueeze(y, two), op.Unsqueeze(cdfn, one)))  # [B, M, n]
        dist = op.Where(op.Unsqueeze(slot_valid, one), dist, inf)
        pick = op.ArgMin(dist, axis=2, keepdims=0, select_last_index=0)  # [B, M]

        # unique, as in torch: mark the picked slots, then scatter slot k to cumsum(picked)[k];
        # unpicked slots write 0 to position 0 (CLS), so no two writes to a position disagree.
        zeros = op.Sub(rank, rank)  # [B, n] int64
        hits = op.ScatterElements(zeros, pick, op.Add(op.Sub(pick, pick), one_s), axis=1)
        picked = op.And(op.Equal(hits, one_s), slot_valid)  # [B, n]
        picked_i = op.Cast(picked, to=7)
        target = op.Where(picked, op.CumSum(picked_i, one_s), zero_s)
        sampled = op.ScatterElements(zeros, target, op.Where(picked, order, zero_s), axis=1)
        sampled_count = op.Add(op.ReduceSum(picked_i, one, keepdims=0), one_s)  # [B]

        # Degenerate images (cdf[m-1] == cdf[0]): keep every scored token, in sorted order.
        shifted = op.Concat(op.Slice(zeros, zero, one, one), op.Slice(order, zero, minus_one, one), axis=1)
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
