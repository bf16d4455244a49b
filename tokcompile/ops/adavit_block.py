"""AdaViT's block (methods-reference.md §5.2) as tensor functions with real skipping: decisions,
then the attention and MLP sub-layers on the compacted rows and kept heads only.

Contract, for a DeiT block (pre-norm, no LayerScale/qk-norm, exact GELU) with input x [B, N, C]
and H heads of width hd = C / H::

    adavit_decide(x, LN1, token head, head head?, layer head?, H, thresholds)
        → tokens [B, N] bool = [CLS] ++ (sigmoid(Wt·LN1(x)[:, 1:] + bt) > t_thr)
          heads  [B, H] bool = sigmoid(Wh·x[:, 0] + bh) > h_thr     (all True without a head head)
          layers [B, 2] bool = sigmoid(Wl·x[:, 0] + bl) > l_thr     (attn, mlp; all True without)
        decision heads: token [1, C], heads [H, C], layers [2, C] weights with biases
        (``decision_outputs``); decisions in float32
    sublayer_rows(tokens, layers, s) → [B, N] bool: the rows sub-layer s computes (tokens & on) | CLS
    compacted_position(keep)         → [B, N] int64: each kept row's place in the compacted order, -1 else
    kept_rows(rows, valid)           → rows, -1 on padding
    adavit_attention(x, rows, valid, position, heads?, head_valid?, layers, LN1, qkv, proj, H)
        → x + scatter(attention of LN1(x[rows]) with the kept heads only) [B, N, C]
    adavit_mlp(x, rows, valid, position, heads, layers, LN2, fc1, fc2)
        → x + scatter(fc2(GELU(fc1(LN2(x[rows]) · channels of kept heads)))) [B, N, C]

``rows``/``valid`` [B, T] are a ``compact_tokens`` result (padding masked as keys), ``position``
[B, N] maps each token to its computed row (-1: not computed, no update); ``heads``/``head_valid``
[B, K] the kept heads compacted the same way. A sub-layer that is off for an image adds nothing
to it (its CLS row is computed and multiplied by 0). fx leaves (``torch.fx.wrap``) that
``insert_adavit_gates`` inserts; export traces them to plain ONNX.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .padded_tokens import gather_tokens, key_padding_bias, positions

# The decisions of a block, in adavit_decide's output order.
DECISIONS = ("tokens", "heads", "layers")


def decision_outputs(num_heads: int) -> dict[str, int]:
    """Output width of each decision head: tokens 1 (per token), heads H, layers 2 (attn, mlp)."""
    return {"tokens": 1, "heads": num_heads, "layers": 2}


@torch.fx.wrap
def adavit_decide(
    x: torch.Tensor,
    norm_w: torch.Tensor,
    norm_b: torch.Tensor,
    eps: float,
    token_w: torch.Tensor,
    token_b: torch.Tensor,
    head_w: Optional[torch.Tensor],
    head_b: Optional[torch.Tensor],
    layer_w: Optional[torch.Tensor],
    layer_b: Optional[torch.Tensor],
    num_heads: int,
    token_threshold: float,
    head_threshold: float,
    layer_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, N, C] block input → tokens [B, N], heads [B, H], layers [B, 2] (bool), in float32."""
    B, N, C = x.shape
    x32 = x.float()
    h = F.layer_norm(x32, (C,), norm_w.float(), norm_b.float(), eps)
    picked = torch.sigmoid(F.linear(h[:, 1:], token_w.float(), token_b.float()))[..., 0] > token_threshold
    tokens = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), picked], dim=1)
    if head_w is None or head_b is None or layer_w is None or layer_b is None:
        heads = torch.ones(B, num_heads, dtype=torch.bool, device=x.device)
        return tokens, heads, torch.ones(B, 2, dtype=torch.bool, device=x.device)
    policy = x32[:, 0]  # the pre-norm CLS of the block input (norm_policy=False)
    heads = torch.sigmoid(F.linear(policy, head_w.float(), head_b.float())) > head_threshold
    layers = torch.sigmoid(F.linear(policy, layer_w.float(), layer_b.float())) > layer_threshold
    return tokens, heads, layers


@torch.fx.wrap
def sublayer_rows(tokens: torch.Tensor, layers: torch.Tensor, sublayer: int) -> torch.Tensor:
    """tokens [B, N], layers [B, 2] bool → [B, N] bool: the rows sub-layer ``sublayer`` (0 attn,
    1 mlp) computes: the selected tokens when it is on, CLS always."""
    cls = positions(tokens) == 0
    return (tokens & layers[:, sublayer : sublayer + 1]) | cls


@torch.fx.wrap
def compacted_position(keep: torch.Tensor) -> torch.Tensor:
    """keep [B, N] → each kept token's row in the compacted order (ascending positions), -1 elsewhere."""
    return torch.where(keep, keep.long().cumsum(1) - 1, -1)


@torch.fx.wrap
def kept_rows(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """rows, valid [B, T] → rows with -1 on padding (the original ids of the computed rows)."""
    return torch.where(valid, rows, -1)


def _add_back(x: torch.Tensor, update: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """x [B, N, C] + update [B, T, C] at the rows ``position`` [B, N] points to (-1: no update)."""
    B, T, C = update.shape
    padded = torch.cat([update, update.new_zeros(B, 1, C)], dim=1)  # row T: zeros for skipped tokens
    return x + gather_tokens(padded, torch.where(position < 0, T, position)).to(x.dtype)


def _norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), w.float(), b.float(), eps).to(x.dtype)


@torch.fx.wrap
def adavit_attention(
    x: torch.Tensor,
    rows: torch.Tensor,
    valid: torch.Tensor,
    position: torch.Tensor,
    heads: Optional[torch.Tensor],
    head_valid: Optional[torch.Tensor],
    layers: torch.Tensor,
    norm_w: torch.Tensor,
    norm_b: torch.Tensor,
    eps: float,
    qkv_w: torch.Tensor,
    qkv_b: Optional[torch.Tensor],
    proj_w: torch.Tensor,
    proj_b: Optional[torch.Tensor],
    num_heads: int,
) -> torch.Tensor:
    """The attention sub-layer on the compacted rows [B, T] and kept heads [B, K] only.

    x [B, N, C]; rows/valid: compacted attention rows (padding masked as keys); position [B, N]:
    row of each computed token; heads/head_valid: kept heads compacted (None: every head).
    Dropped heads contribute nothing; the projection bias is added in full (official DynaLinear).
    """
    B, N, C = x.shape
    T = rows.shape[1]
    hd = C // num_heads
    h = _norm(gather_tokens(x, rows), norm_w, norm_b, eps)
    qkv_b = qkv_b if qkv_b is not None else qkv_w.new_zeros(3 * C)
    bias = key_padding_bias(valid, h)
    if heads is None or head_valid is None:
        q, k, v = F.linear(h, qkv_w, qkv_b).reshape(B, T, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = F.linear(o.transpose(1, 2).reshape(B, T, C), proj_w, proj_b)
    else:
        K = heads.shape[1]
        live = head_valid.to(h.dtype)  # padded head slots: zero weights, so q = k = v = 0 there
        w = qkv_w.reshape(3, num_heads, hd, C)[:, heads] * live[None, :, :, None, None]  # [3, B, K, hd, C]
        b = qkv_b.reshape(3, num_heads, hd)[:, heads] * live[None, :, :, None]  # [3, B, K, hd]
        w = w.permute(1, 4, 0, 2, 3).reshape(B, C, 3 * K * hd)
        qkv = torch.bmm(h, w) + b.permute(1, 0, 2, 3).reshape(B, 1, 3 * K * hd)
        q, k, v = qkv.reshape(B, T, 3, K, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, K, T, hd]
        pw = proj_w.reshape(C, num_heads, hd).permute(1, 2, 0)[heads] * live[:, :, None, None]  # [B, K, hd, C]
        out = torch.bmm(o.transpose(1, 2).reshape(B, T, K * hd), pw.reshape(B, K * hd, C))
        if proj_b is not None:
            out = out + proj_b
    gate = (valid & layers[:, 0:1]).to(out.dtype)[..., None]
    return _add_back(x, out * gate, position)


@torch.fx.wrap
def adavit_mlp(
    x: torch.Tensor,
    rows: torch.Tensor,
    valid: torch.Tensor,
    position: torch.Tensor,
    heads: torch.Tensor,
    layers: torch.Tensor,
    norm_w: torch.Tensor,
    norm_b: torch.Tensor,
    eps: float,
    fc1_w: torch.Tensor,
    fc1_b: Optional[torch.Tensor],
    fc2_w: torch.Tensor,
    fc2_b: Optional[torch.Tensor],
) -> torch.Tensor:
    """The MLP sub-layer on the compacted rows [B, T] only; heads [B, H] bool masks fc1's input
    channels of dropped heads (methods-reference §5, ada_head_v2=False)."""
    B, N, C = x.shape
    H = heads.shape[1]
    h = _norm(gather_tokens(x, rows), norm_w, norm_b, eps)
    channels = (heads[:, :, None] & torch.ones(1, 1, C // H, dtype=torch.bool, device=heads.device)).reshape(B, 1, C)
    out = F.linear(F.gelu(F.linear(h * channels.to(h.dtype), fc1_w, fc1_b)), fc2_w, fc2_b)
    gate = (valid & layers[:, 1:2]).to(out.dtype)[..., None]
    return _add_back(x, out * gate, position)
