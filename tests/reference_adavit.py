"""AdaViT test helpers: an official-format checkpoint and the official dense-masking forward.

``official_masked_adavit`` follows methods-reference.md §5.2 the way the official code computes
it (every token, every head: masks and -inf logits, DynaLinear row/column masking), written
independently of tokcompile's gather/skip pass so the two can be compared.
"""

from __future__ import annotations

import torch
from reference_vit import embed_tokens

KINDS = {
    "tokens": "blocks.{l}.attn.token_select.mlp_head",
    "heads": "blocks.{l}.head_select.mlp_head",
    "layers": "blocks.{l}.layer_select.mlp_head",
}


def adavit_state(model: torch.nn.Module, seed: int = 0, keep_layers: int = 1) -> dict[str, torch.Tensor]:
    """The zoo model's weights in the official AdaViT layout, with decision heads scaled so that
    heads, sub-layers and tokens are each kept for some images and skipped for others."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if ".attn.qkv." in key:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                state[key.replace(".qkv.", f".{name}.")] = part.clone()
        else:
            state[key] = value.clone()
    C, H = model.embed_dim, model.blocks[0].attn.num_heads
    # (outputs, weight std · sqrt(C), bias std): the CLS that heads/layers read is small in early
    # blocks, so their decisions vary across images through a random bias near the threshold.
    sizes = {"tokens": (1, 1.0, 0.0), "heads": (H, 16.0, 0.2), "layers": (2, 16.0, 0.2)}
    for i_blk in range(len(model.blocks)):
        for kind, (out, std, bias) in sizes.items():
            if kind != "tokens" and i_blk < keep_layers:
                continue
            key = KINDS[kind].format(l=i_blk)
            state[f"{key}.weight"] = torch.randn(out, C, generator=g) * std / C**0.5
            state[f"{key}.bias"] = (
                0.3 + torch.randn(out, generator=g) * bias if kind == "tokens" else torch.randn(out, generator=g) * bias
            )
    return state


@torch.no_grad()
def official_masked_adavit(model, state, images, keep_layers=1, t_thr=0.6, h_thr=0.5, l_thr=0.5):
    """Logits and per-block decisions (tokens [B, N], heads [B, H], layers [B, 2]) of the official
    dense-masking AdaViT forward."""
    x = embed_tokens(model, images)
    B, N, C = x.shape
    decisions = []
    for i_blk, blk in enumerate(model.blocks):
        H = blk.attn.num_heads

        def head(kind, inp, i_blk=i_blk):
            key = KINDS[kind].format(l=i_blk)
            return torch.sigmoid(inp @ state[f"{key}.weight"].T + state[f"{key}.bias"])

        if i_blk >= keep_layers:
            hs = (head("heads", x[:, 0]) > h_thr).float()
            ls = (head("layers", x[:, 0]) > l_thr).float()
        else:
            hs, ls = torch.ones(B, H), torch.ones(B, 2)
        h = blk.norm1(x)
        ts = torch.cat([torch.ones(B, 1), (head("tokens", h[:, 1:])[..., 0] > t_thr).float()], dim=1)
        x = masked_block(blk, x, ts, hs, ls)
        decisions.append((ts.bool(), hs.bool(), ls.bool()))
    return model.forward_head(model.norm(x)), decisions


@torch.no_grad()
def masked_block(blk, x, ts, hs, ls):
    """One timm DeiT block the official dense-masking way: x [B, N, C]; ts [B, N], hs [B, H], ls [B, 2]
    the token, head and sub-layer decisions as 0/1 floats. Every token and head is computed; skipped
    tokens are masked out of the attention with -inf logits (a token always sees itself), dropped
    heads zeroed at the qkv output and proj input channels (and fc1's input), the sub-layers
    multiplied by their gate and by the token mask."""
    a = blk.attn
    B, N, C = x.shape
    H, hd = a.num_heads, C // a.num_heads
    width = hs[:, :, None].expand(B, H, hd).reshape(B, 1, C)
    h = blk.norm1(x)
    w, b = a.qkv.weight, a.qkv.bias
    q, k, v = ((h @ w[i * C : (i + 1) * C].T + b[i * C : (i + 1) * C]) * width for i in range(3))
    q, k, v = (t.reshape(B, N, H, hd).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-2, -1) * hd**-0.5
    policy = (ts[:, :, None] * ts[:, None, :])[:, None]
    eye = torch.eye(N)
    logits = logits * policy + torch.zeros_like(logits).masked_fill((1 - policy - eye) > 0, float("-inf"))
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    attn_x = ((o * width) @ a.proj.weight.T + a.proj.bias) * ts[..., None]
    x = x + ls[:, 0, None, None] * attn_x
    mlp = blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x) * width)))
    return x + ls[:, 1, None, None] * mlp * ts[..., None]
