"""Helpers shared by passes whose token count becomes per-image (ATS, A-ViT): padded token
tensors with a validity mask, compacted to the front; the meta keys stages and the runtime read.

Their token dimension stays dynamic in the exported stage files, so they avoid the ops TensorRT's
ONNX parser expands into 10-30 int64 shape layers each (Range, Expand, dynamically shaped
zeros): positions are a cumulative sum, broadcasts are elementwise (benchmarks/trt_layers.py)."""

from __future__ import annotations

import torch
import torch.fx as fx

from ..models.tracing import BlockNodes

TOKEN_DIM_KEY = "tokcompile.token_dim"  # tensors whose dim 1 is the (padded) token dimension
BOUNDARY_KEY = "tokcompile.boundary"  # nodes that end a stage: a data-dependent token count is known
# A compaction op's dimension: "tokens" (the bucketed token count, the default), or another
# data-dependent dim a stage boundary also cuts (AdaViT: "heads", "mlp_tokens"). Tensors carry
# the same name in TOKEN_DIM_KEY (True means "tokens").
COUNT_DIM_KEY = "tokcompile.count_dim"
PRIMARY_DIM = "tokens"


def dim_name(meta_value: object) -> str:
    """The dimension name a TOKEN_DIM_KEY / COUNT_DIM_KEY meta value stands for."""
    return meta_value if isinstance(meta_value, str) else PRIMARY_DIM


@torch.fx.wrap
def all_valid(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, C] → [B, N] all True."""
    return torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)


@torch.fx.wrap
def key_padding_bias(valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """valid: [B, n] → additive attention mask [B, 1, 1, n]: 0 for real keys, -inf for padding."""
    return torch.where(valid[:, None, None, :], 0.0, float("-inf")).to(like.dtype)


@torch.fx.wrap
def gather_tokens(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x: [B, n, C], rows: [B, n] → x[b, rows[b]]."""
    return x.gather(1, broadcast_rows(rows, x.shape[-1]))


def broadcast_rows(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """rows [B, n] → [B, n, channels], each row index repeated over the channels (a broadcasting
    add of a constant, not an Expand, in the exported graph)."""
    return rows.unsqueeze(-1) + torch.zeros(1, 1, channels, dtype=rows.dtype, device=rows.device)


@torch.fx.wrap
def valid_prefix(rows: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """[B, n] bool: position < count (sampled tokens are compacted to the front)."""
    return positions(rows) < count[:, None]


def positions(like: torch.Tensor) -> torch.Tensor:
    """[B, n] int64 0, 1, ..., n-1 in every row of the integer or bool ``like`` [B, n]: a
    cumulative sum of ones made elementwise (``ones_like`` and ``arange`` over the dynamic n
    export as Expand and Range)."""
    return (like.long() * 0 + 1).cumsum(dim=1) - 1


@torch.fx.wrap
def sampled_ids(ids: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Original token ids after sampling: ids[rows], -1 on padding."""
    return torch.where(valid, ids.gather(1, rows), -1)


@torch.fx.wrap
def initial_ids(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, C] → [[0, 1, ..., N-1]] * B (int64): original token ids."""
    return torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], x.shape[1])


def mask_padded_keys(graph: fx.Graph, block: BlockNodes, valid: fx.Node) -> None:
    """Give ``block``'s attention (fused SDPA) the additive key mask of ``valid``."""
    with graph.inserting_before(block.sdpa):
        bias = graph.call_function(key_padding_bias, (valid, block.q))
    block.sdpa.kwargs = {**block.sdpa.kwargs, "attn_mask": bias}
