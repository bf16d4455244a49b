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

The decision heads are ``ctx.method_state[decision_head_name(l, kind, "weight"|"bias")]``
(kind: tokens in every block, heads and layers from block ``keep_layers`` on), which the method
prepares (``methods/adavit.py``: from the official checkpoint, or drawn at random, loudly). The
tensor functions are ``ops/adavit_block.py``. Blocks are recognised by graph structure
(``passes/deit_block.py``, passes/README.md invariant 5).
Outputs per block l: ``count_<l>``, ``kept_ids_<l>`` (attention rows), ``tokens_<l>``,
``heads_<l>``, ``layers_<l>`` (the decisions, bool), and from block ``keep_layers`` on
``head_count_<l>`` / ``mlp_count_<l>`` (kept heads, MLP rows).
"""

from __future__ import annotations

import logging
import operator
from typing import Optional

import torch
import torch.fx as fx

from ..models.tracing import find_blocks
from ..ops.adavit_block import (
    DECISIONS,
    adavit_attention,
    adavit_decide,
    adavit_mlp,
    compacted_position,
    kept_rows,
    sublayer_rows,
)
from ..ops.compact_tokens import compact_tokens
from ..ops.padded_tokens import valid_prefix
from .deit_block import deit_block
from .graph_outputs import append_outputs
from .manager import PassContext, PassResult
from .names import (
    BOUNDARY_KEY,
    COUNT_DIM_KEY,
    HEAD_COUNT,
    HEADS,
    LAYERS,
    MLP_COUNT,
    PRIMARY_DIM,
    TOKEN_DIM_KEY,
    TOKEN_OP_KEY,
    TOKENS,
    block_output,
    count_name,
    kept_ids_name,
)
from .tokens import token_op_nodes

logger = logging.getLogger(__name__)

HOLDER = "adavit"  # submodule of the GraphModule holding the decision heads as buffers
# AdaViT's data-dependent dims besides the bucketed tokens: kept heads and the MLP's rows.
HEADS_DIM, MLP_TOKENS_DIM = "heads", "mlp_tokens"


def decision_head_name(block: int, kind: str, part: str) -> str:
    """The ``ctx.method_state`` key (and buffer name) of a decision head tensor: ``b3_heads_weight``.

    kind: tokens | heads | layers (``ops.adavit_block.DECISIONS``); part: weight | bias."""
    return f"b{block}_{kind}_{part}"


def gated(block: int, keep_layers: int) -> bool:
    """Whether ``block`` has head and sub-layer gates (blocks before ``keep_layers`` have tokens only)."""
    return block >= keep_layers


def block_decisions(block: int, keep_layers: int) -> tuple[str, ...]:
    """The decision heads ``block`` has: all ``DECISIONS`` when ``gated``, else tokens only."""
    return DECISIONS if gated(block, keep_layers) else (TOKENS,)


def insert_adavit_gates(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    cfg = ctx.config
    if token_op_nodes(gm):
        return PassResult(gm, False)
    spec = ctx.spec
    graph = gm.graph
    blocks = find_blocks(gm)
    parts = [deit_block(gm, b, "adavit") for b in blocks]  # validate every block before rewriting any
    needed = [
        decision_head_name(b.index, kind, part)
        for b in blocks
        for kind in block_decisions(b.index, cfg.keep_layers)
        for part in ("weight", "bias")
    ]
    missing = [name for name in needed if name not in ctx.method_state]
    if missing:
        raise ValueError(
            f"ctx.method_state lacks the decision heads {', '.join(missing[:3])}...; methods.apply_method prepares "
            "them (methods/adavit.py)"
        )
    holder = torch.nn.Module()
    for name in needed:
        holder.register_buffer(name, ctx.method_state[name])
    gm.add_submodule(HOLDER, holder)
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
        blk, y = block.index, block.mlp_residual
        x = replaced.get(p.x, p.x)
        with graph.inserting_before(y.next):
            n1w, n1b, eps1 = p.norm1
            head = (
                [
                    attr(f"{HOLDER}.{decision_head_name(blk, kind, wb)}")
                    for kind in (HEADS, LAYERS)
                    for wb in ("weight", "bias")
                ]
                if gated(blk, cfg.keep_layers)
                else [None] * 4
            )
            decide = graph.call_function(
                adavit_decide,
                (
                    x,
                    n1w,
                    n1b,
                    eps1,
                    attr(f"{HOLDER}.{decision_head_name(blk, TOKENS, 'weight')}"),
                    attr(f"{HOLDER}.{decision_head_name(blk, TOKENS, 'bias')}"),
                    *head,
                    spec.num_heads,
                    cfg.token_threshold,
                    cfg.head_threshold,
                    cfg.layer_threshold,
                ),
            )
            tokens, heads, layers = (graph.call_function(operator.getitem, (decide, i)) for i in range(3))
            keep_a = graph.call_function(sublayer_rows, (tokens, layers, 0))
            op_a, rows_a, count_a, valid_a = compact(keep_a, PRIMARY_DIM)
            position_a = graph.call_function(compacted_position, (keep_a,))
            ids = graph.call_function(kept_rows, (rows_a, valid_a))
            ids.meta[TOKEN_DIM_KEY] = PRIMARY_DIM
            group = [op_a, rows_a, count_a, valid_a, position_a, ids]
            head_rows = head_valid = None
            counts = []  # extra counts are outputs, so the runtime can read them to cut their dims
            rows_m, valid_m, position_m = rows_a, valid_a, position_a
            if gated(blk, cfg.keep_layers):
                op_h, head_rows, head_count, head_valid = compact(heads, HEADS_DIM)
                keep_m = graph.call_function(sublayer_rows, (tokens, layers, 1))
                op_m, rows_m, count_m, valid_m = compact(keep_m, MLP_TOKENS_DIM)
                position_m = graph.call_function(compacted_position, (keep_m,))
                group += [op_h, head_rows, head_count, head_valid, op_m, rows_m, count_m, valid_m, position_m]
                counts = [(block_output(HEAD_COUNT, blk), head_count), (block_output(MLP_COUNT, blk), count_m)]
            x1 = graph.call_function(
                adavit_attention,
                (
                    x,
                    rows_a,
                    valid_a,
                    position_a,
                    head_rows,
                    head_valid,
                    layers,
                    n1w,
                    n1b,
                    eps1,
                    attr(f"{p.qkv}.weight"),
                    attr(f"{p.qkv}.bias"),
                    attr(f"{p.proj}.weight"),
                    attr(f"{p.proj}.bias"),
                    spec.num_heads,
                ),
            )
            n2w, n2b, eps2 = p.norm2
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
                    attr(f"{p.fc1}.weight"),
                    attr(f"{p.fc1}.bias"),
                    attr(f"{p.fc2}.weight"),
                    attr(f"{p.fc2}.bias"),
                ),
            )
        y.replace_all_uses_with(x2)
        replaced[y] = x2
        op_a.meta[TOKEN_OP_KEY] = blk
        for node in group:
            node.meta[BOUNDARY_KEY] = blk
        outputs += [
            (count_name(blk), count_a),
            (kept_ids_name(blk), ids),
            (block_output(TOKENS, blk), tokens),
            (block_output(HEADS, blk), heads),
            (block_output(LAYERS, blk), layers),
            *counts,
        ]
    ctx.info["outputs"] = append_outputs(gm, outputs)
    n = spec.num_tokens  # upper bounds; calibration records the counts images actually get
    ctx.info["tokens"] = {"blocks": [{"block": b.index, "attention": n, "mlp": n} for b in blocks], "sequence": [n]}
    graph.eliminate_dead_code()  # the replaced blocks
    logger.info(
        "insert_adavit_gates: %d blocks (head/layer gates from block %d, token threshold %s)",
        len(blocks),
        cfg.keep_layers,
        cfg.token_threshold,
    )
    return PassResult(gm, True)
