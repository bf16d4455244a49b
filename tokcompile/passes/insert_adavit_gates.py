"""insert_adavit_gates: AdaViT per-image head, sub-layer and token skipping, with real skipping.

Rewrite (methods-reference.md §5.2, the official dense masking re-expressed as gather/skip), for
every block l with input x [B, N, C]::

    tokens = [CLS] ++ (sigmoid(Wt·LN1(x)[:, 1:] + bt) > 0.6)        all blocks
    heads  = sigmoid(Wh·x[:, 0] + bh) > 0.5   [B, H]                 blocks ≥ keep_layers, else all
    layers = sigmoid(Wl·x[:, 0] + bl) > 0.5   [B, 2] (attn, mlp)     blocks ≥ keep_layers, else all
    attention rows = compact(tokens & layers[:, 0] | CLS),  heads = compact(heads)
    mlp rows       = compact(tokens & layers[:, 1] | CLS)
    x += scatter(attn(LN1(x[attention rows]), kept heads only))      (zero for rows not computed)
    x += scatter(MLP(LN2(x[mlp rows]) · channels of kept heads))    (§5 "surprise": fc1 input)

The decisions and compactions end a stage; the next stage computes block l on the compacted
rows only: the attention on the bucketed token count, the kept heads on the batch's largest head
count (per-image weights gathered, padded heads zeroed), the MLP on its own token count. A token
skipped in block l is not computed there and comes back in block l + 1 (x keeps all N tokens).
An image whose sub-layer is off computes it for its CLS row only, multiplied by 0 (CLS is the
one row every compaction keeps, so no attention row is ever empty).

Decision heads come from the checkpoint (official keys, see ``models/weights.py``) or, when the
checkpoint has none, are drawn at random (seeded) and the build says so loudly.
Outputs per block l: ``count_<l>``, ``kept_ids_<l>`` (attention rows), ``tokens_<l>``,
``heads_<l>``, ``layers_<l>`` (the decisions, bool), and from block ``keep_layers`` on
``head_count_<l>`` / ``mlp_count_<l>`` (kept heads, MLP rows).
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..errors import TokcompileError
from ..models.tracing import BlockNodes, find_blocks
from ..ops.compact_tokens import compact_tokens
from ._outputs import append_outputs
from ._tokens import (
    BOUNDARY_KEY,
    COUNT_DIM_KEY,
    TOKEN_DIM_KEY,
    broadcast_rows,
    key_padding_bias,
    positions,
    valid_prefix,
)
from .insert_evit_select import TOKEN_OP_KEY, token_op_nodes
from .manager import PassContext, PassResult

logger = logging.getLogger(__name__)

METHOD_STATE_KEY = "tokcompile.method_state"  # gm.meta: decision-head tensors read from the checkpoint
HOLDER = "adavit"  # submodule of the GraphModule holding the decision heads as buffers
# Official parameter names of one block's decision heads (MengLcool/AdaViT StepAdaBlock).
HEAD_KEYS = {
    "tokens": "blocks.{l}.attn.token_select.mlp_head",
    "heads": "blocks.{l}.head_select.mlp_head",
    "layers": "blocks.{l}.layer_select.mlp_head",
}


# ---------------------------------------------------------------------------------------------
# Tensor functions (fx leaves; traced to plain ONNX at export).


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
    """Rows a sub-layer computes: the selected tokens when it is on, CLS always."""
    cls = positions(tokens) == 0
    return (tokens & layers[:, sublayer : sublayer + 1]) | cls


@torch.fx.wrap
def compacted_position(keep: torch.Tensor) -> torch.Tensor:
    """keep [B, N] → each kept token's row in the compacted order (ascending positions), -1 elsewhere."""
    return torch.where(keep, keep.long().cumsum(1) - 1, -1)


@torch.fx.wrap
def kept_rows(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, rows, -1)


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x.gather(1, broadcast_rows(rows, x.shape[2]))


def _add_back(x: torch.Tensor, update: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """x [B, N, C] + update [B, T, C] at the rows ``position`` [B, N] points to (-1: no update)."""
    B, T, C = update.shape
    padded = torch.cat([update, update.new_zeros(B, 1, C)], dim=1)  # row T: zeros for skipped tokens
    return x + _gather_rows(padded, torch.where(position < 0, T, position)).to(x.dtype)


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
    h = _norm(_gather_rows(x, rows), norm_w, norm_b, eps)
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
    h = _norm(_gather_rows(x, rows), norm_w, norm_b, eps)
    channels = (heads[:, :, None] & torch.ones(1, 1, C // H, dtype=torch.bool, device=heads.device)).reshape(B, 1, C)
    out = F.linear(F.gelu(F.linear(h * channels.to(h.dtype), fc1_w, fc1_b)), fc2_w, fc2_b)
    gate = (valid & layers[:, 1:2]).to(out.dtype)[..., None]
    return _add_back(x, out * gate, position)


# ---------------------------------------------------------------------------------------------
# The pass.


def _layer_norm_args(node: fx.Node) -> tuple[fx.Node, Any, Any, float]:
    """(input, weight, bias, eps) of an F.layer_norm call node."""
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args["input"], args.get("weight"), args.get("bias"), float(args.get("eps", 1e-5))


def _block_parts(gm: fx.GraphModule, block: BlockNodes) -> dict[str, Any]:
    """The nodes and modules of a DeiT-style block; refuses anything AdaViT's blocks do not have."""
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    path = block.path
    qkv_node, fc1_node = by_target.get(f"{path}.attn.qkv"), by_target.get(f"{path}.mlp.fc1")
    if qkv_node is None or fc1_node is None or qkv_node.args[0].target is not F.layer_norm:
        raise TokcompileError(
            f"method 'adavit' rewrites DeiT-style blocks (norm1 → attn.qkv ... norm2 → mlp.fc1); block '{path}' "
            "is not one"
        )
    # timm's LayerScale and LayerNorm are traced through, not called as modules: only their
    # parameters (get_attr) show that they are there.
    params = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    for name in ("attn.q_norm", "attn.k_norm", "attn.norm", "ls1", "ls2", "mlp.norm"):
        module = gm.get_submodule(f"{path}.{name}") if f"{path}.{name}" in by_target else torch.nn.Identity()
        traced = next((t for t in params if t.startswith(f"{path}.{name}.")), None)
        if traced is not None or not isinstance(module, (torch.nn.Identity, torch.nn.Dropout)):
            kind = f"a layer with parameter '{traced}'" if traced is not None else type(module).__name__
            raise TokcompileError(
                f"method 'adavit' supports DeiT blocks as the official AdaViT defines them; '{path}.{name}' is "
                f"{kind} (no qk-norm, LayerScale or extra norms)"
            )
    act = gm.get_submodule(f"{path}.mlp.act")
    if not (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
        raise TokcompileError(f"method 'adavit' needs the exact GELU MLP of DeiT; '{path}.mlp.act' is {act}")
    ln1, ln2 = qkv_node.args[0], fc1_node.args[0]
    x_in, n1w, n1b, eps1 = _layer_norm_args(ln1)
    _, n2w, n2b, eps2 = _layer_norm_args(ln2)
    return {"x": x_in, "norm1": (n1w, n1b, eps1), "norm2": (n2w, n2b, eps2), "path": path}


def decision_heads(
    state: dict[str, torch.Tensor], depth: int, dim: int, num_heads: int, keep_layers: int, seed: int
) -> tuple[dict[str, torch.Tensor], str]:
    """Per block, the decision-head tensors named ``b<l>_<kind>_<weight|bias>``; and their source.

    From ``state`` (official names, see HEAD_KEYS) when it has them, else random with the official
    initialisation (trunc-normal std 0.02, bias 0) from ``seed``.
    """
    shapes = {"tokens": 1, "heads": num_heads, "layers": 2}
    wanted = [(blk, kind) for blk in range(depth) for kind in shapes if kind == "tokens" or blk >= keep_layers]
    out: dict[str, torch.Tensor] = {}
    if state:
        for blk, kind in wanted:
            key = HEAD_KEYS[kind].format(l=blk)
            w, b = state.get(f"{key}.weight"), state.get(f"{key}.bias")
            if w is None or b is None or tuple(w.shape) != (shapes[kind], dim):
                got = "missing" if w is None or b is None else f"shape {tuple(w.shape)}"
                raise TokcompileError(
                    f"the checkpoint's AdaViT decision heads do not fit this model: '{key}.weight' is {got}, "
                    f"expected ({shapes[kind]}, {dim}) (blocks {keep_layers}.. need head and layer selectors)"
                )
            out[f"b{blk}_{kind}_weight"], out[f"b{blk}_{kind}_bias"] = w.float(), b.float()
        return out, "checkpoint"
    generator = torch.Generator().manual_seed(seed)
    for blk, kind in wanted:
        w = torch.empty(shapes[kind], dim)
        torch.nn.init.trunc_normal_(w, std=0.02, generator=generator)
        out[f"b{blk}_{kind}_weight"], out[f"b{blk}_{kind}_bias"] = w, torch.zeros(shapes[kind])
    return out, "random"


def insert_adavit_gates(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if token_op_nodes(gm):
        return PassResult(gm, False)
    spec = ctx.spec
    graph = gm.graph
    blocks = find_blocks(gm)
    parts = [_block_parts(gm, b) for b in blocks]  # validate every block before rewriting any
    tensors, source = decision_heads(
        gm.meta.get(METHOD_STATE_KEY) or {},
        len(blocks),
        spec.embed_dim,
        spec.num_heads,
        cfg.keep_layers,
        cfg.seed,
    )
    holder = torch.nn.Module()
    for name, tensor in tensors.items():
        holder.register_buffer(name, tensor)
    gm.add_submodule(HOLDER, holder)
    if source == "random":
        ctx.info.setdefault("method_warnings", []).append(
            f"AdaViT's decision heads are RANDOM (seed {cfg.seed}): the checkpoint has none. Heads, sub-layers and "
            "tokens are skipped by untrained gates, so the outputs mean nothing; pass the official AdaViT "
            "checkpoint with --weights PATH (see README, AdaViT)"
        )
    outputs: list[tuple[str, fx.Node]] = []

    def attr(target: str) -> Optional[fx.Node]:
        module_path, _, name = target.rpartition(".")
        if getattr(gm.get_submodule(module_path), name, None) is None:
            return None
        return graph.get_attr(target)

    def compact(keep: fx.Node, dim: str) -> tuple[fx.Node, fx.Node, fx.Node, fx.Node]:
        op = graph.call_function(compact_tokens, (keep,))
        rows = graph.call_function(operator.getitem, (op, 0))
        count = graph.call_function(operator.getitem, (op, 1))
        valid = graph.call_function(valid_prefix, (rows, count))
        op.meta[COUNT_DIM_KEY] = dim
        for node in (rows, valid):
            node.meta[TOKEN_DIM_KEY] = dim
        return op, rows, count, valid

    replaced: dict[fx.Node, fx.Node] = {}  # old block output → its rewrite (the next block's input)
    for block, p in zip(blocks, parts):
        blk, path, y = block.index, p["path"], block.mlp_residual
        p["x"] = replaced.get(p["x"], p["x"])
        gated = blk >= cfg.keep_layers
        with graph.inserting_before(y.next):
            n1w, n1b, eps1 = p["norm1"]
            head = (
                [attr(f"{HOLDER}.b{blk}_{kind}_{wb}") for kind in ("heads", "layers") for wb in ("weight", "bias")]
                if gated
                else [None] * 4
            )
            decide = graph.call_function(
                adavit_decide,
                (
                    p["x"],
                    n1w,
                    n1b,
                    eps1,
                    attr(f"{HOLDER}.b{blk}_tokens_weight"),
                    attr(f"{HOLDER}.b{blk}_tokens_bias"),
                    *head,
                    spec.num_heads,
                    cfg.token_threshold,
                    cfg.head_threshold,
                    cfg.layer_threshold,
                ),
            )
            tokens, heads, layers = (graph.call_function(operator.getitem, (decide, i)) for i in range(3))
            keep_a = graph.call_function(sublayer_rows, (tokens, layers, 0))
            op_a, rows_a, count_a, valid_a = compact(keep_a, "tokens")
            position_a = graph.call_function(compacted_position, (keep_a,))
            ids = graph.call_function(kept_rows, (rows_a, valid_a))
            ids.meta[TOKEN_DIM_KEY] = "tokens"
            group = [op_a, rows_a, count_a, valid_a, position_a, ids]
            head_rows = head_valid = None
            counts = []  # extra counts are outputs, so the runtime can read them to cut their dims
            rows_m, valid_m, position_m = rows_a, valid_a, position_a
            if gated:
                op_h, head_rows, head_count, head_valid = compact(heads, "heads")
                keep_m = graph.call_function(sublayer_rows, (tokens, layers, 1))
                op_m, rows_m, count_m, valid_m = compact(keep_m, "mlp_tokens")
                position_m = graph.call_function(compacted_position, (keep_m,))
                group += [op_h, head_rows, head_count, head_valid, op_m, rows_m, count_m, valid_m, position_m]
                counts = [(f"head_count_{blk}", head_count), (f"mlp_count_{blk}", count_m)]
            x1 = graph.call_function(
                adavit_attention,
                (
                    p["x"],
                    rows_a,
                    valid_a,
                    position_a,
                    head_rows,
                    head_valid,
                    layers,
                    n1w,
                    n1b,
                    eps1,
                    attr(f"{path}.attn.qkv.weight"),
                    attr(f"{path}.attn.qkv.bias"),
                    attr(f"{path}.attn.proj.weight"),
                    attr(f"{path}.attn.proj.bias"),
                    spec.num_heads,
                ),
            )
            n2w, n2b, eps2 = p["norm2"]
            x2 = graph.call_function(
                adavit_mlp,
                (
                    x1,
                    rows_m,
                    valid_m,
                    position_m,
                    heads,
                    layers,
                    n2w,
                    n2b,
                    eps2,
                    attr(f"{path}.mlp.fc1.weight"),
                    attr(f"{path}.mlp.fc1.bias"),
                    attr(f"{path}.mlp.fc2.weight"),
                    attr(f"{path}.mlp.fc2.bias"),
                ),
            )
        y.replace_all_uses_with(x2)
        replaced[y] = x2
        op_a.meta[TOKEN_OP_KEY] = blk
        for node in group:
            node.meta[BOUNDARY_KEY] = blk
        outputs += [
            (f"count_{blk}", count_a),
            (f"kept_ids_{blk}", ids),
            (f"tokens_{blk}", tokens),
            (f"heads_{blk}", heads),
            (f"layers_{blk}", layers),
            *counts,
        ]
    ctx.info["outputs"] = append_outputs(gm, outputs)
    n = spec.num_tokens  # upper bounds; calibration records the counts images actually get
    ctx.info["tokens"] = {"blocks": [{"block": b.index, "attention": n, "mlp": n} for b in blocks], "sequence": [n]}
    graph.eliminate_dead_code()  # the replaced blocks
    logger.info(
        "insert_adavit_gates: %d blocks (head/layer gates from block %d, token threshold %s; decision heads %s)",
        len(blocks),
        cfg.keep_layers,
        cfg.token_threshold,
        source,
    )
    return PassResult(gm, True)
