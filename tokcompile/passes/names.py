"""Every name passes write for later layers to read: node/graph metadata keys and graph outputs.

Passes mark what they inserted in ``node.meta`` / ``gm.meta`` under the keys below (idempotence,
stage splitting, export); export, the runtime, verify and deploy read the named graph outputs.
Nothing else spells these strings. Imports nothing heavy (no torch), so torch-free readers
(compare's report, Triton's model) use it too.

Graph outputs (passes/README.md invariant 7): ``logits`` first, then ``features`` when the model
has a classifier head, then per reduction block ``<kind>_<block>``, e.g. ``kept_ids_3``::

    kept_ids_<b>   [B, k] int64   original token ids a block kept (EViT, ATS, A-ViT, AdaViT)
    merge_map_<b>  [B, N0] int64  per original token, its position after block b's merge (ToMe)
    count_<b>      [B] int64      tokens per image after block b (data-dependent methods)
    tokens_<b>, heads_<b>, layers_<b>, head_count_<b>, mlp_count_<b>   AdaViT's decisions and counts
"""

from __future__ import annotations

import re
from typing import Optional

# ---------------------------------------------------------------------------- metadata keys
# node.meta
CLS_ATTENTION_KEY = "tokcompile.cls_attention"  # the CLS attention row of block <value>
TOKEN_OP_KEY = "tokcompile.token_op"  # the token op of block <value> (one per reducing block)
TOME_SIZES_KEY = "tokcompile.tome_sizes"  # the ones that seed ToMe's token sizes
PROP_ATTN_KEY = "tokcompile.prop_attn"  # an SDPA call that got the log(size) bias
TOKENS_KEY = "tokcompile.tokens"  # an SDPA call's static token count (annotate_tokens)
OUTPUTS_KEY = "tokcompile.outputs"  # output node: the names of the graph outputs, in order
STAGE_KEY = "tokcompile.stage"  # the stage a node runs in (split_stages)
BOUNDARY_KEY = "tokcompile.boundary"  # nodes that end a stage: a data-dependent count is known
TOKEN_DIM_KEY = "tokcompile.token_dim"  # tensors whose dim 1 is a (padded) data-dependent dim
# A compaction op's dimension: PRIMARY_DIM (the bucketed token count, the default), or another
# data-dependent dim a stage boundary also cuts (AdaViT: "heads", "mlp_tokens"). Tensors carry
# the same name in TOKEN_DIM_KEY (True means PRIMARY_DIM).
COUNT_DIM_KEY = "tokcompile.count_dim"
# gm.meta
PRECISION_KEY = "tokcompile.precision"  # the precision cast_precision cast the graph to

PRIMARY_DIM = "tokens"


def dim_name(meta_value: object) -> str:
    """The dimension name a TOKEN_DIM_KEY / COUNT_DIM_KEY meta value stands for."""
    return meta_value if isinstance(meta_value, str) else PRIMARY_DIM


# ---------------------------------------------------------------------------- graph outputs
LOGITS = "logits"
FEATURES = "features"
FLOAT_OUTPUTS = (LOGITS, FEATURES)  # float32 whatever the precision: the bundle's interface

# per-block output kinds
KEPT_IDS = "kept_ids"
MERGE_MAP = "merge_map"
COUNT = "count"
TOKENS = "tokens"
HEADS = "heads"
LAYERS = "layers"
HEAD_COUNT = "head_count"
MLP_COUNT = "mlp_count"
BLOCK_KINDS = (KEPT_IDS, MERGE_MAP, COUNT, TOKENS, HEADS, LAYERS, HEAD_COUNT, MLP_COUNT)
# per-block outputs that say which tokens a block kept (compared image by image) / how it merged
SELECTION_KINDS = (KEPT_IDS, COUNT)

_BLOCK_OUTPUT = re.compile(r"^(?P<kind>[a-z_]+?)_(?P<block>\d+)$")


def block_output(kind: str, block: int) -> str:
    """The name of block ``block``'s output of ``kind`` (one of BLOCK_KINDS): ``kept_ids_3``."""
    if kind not in BLOCK_KINDS:
        raise ValueError(f"unknown per-block output kind '{kind}' (known: {', '.join(BLOCK_KINDS)})")
    return f"{kind}_{int(block)}"


def kept_ids_name(block: int) -> str:
    return block_output(KEPT_IDS, block)


def merge_map_name(block: int) -> str:
    return block_output(MERGE_MAP, block)


def count_name(block: int) -> str:
    return block_output(COUNT, block)


def parse_output_name(name: str) -> tuple[str, Optional[int]]:
    """``"kept_ids_3"`` → ("kept_ids", 3); ``"head_count_3"`` → ("head_count", 3); a name that is no
    per-block output (``"logits"``, ``"features"``) → (name, None)."""
    match = _BLOCK_OUTPUT.match(name)
    if match is None or match["kind"] not in BLOCK_KINDS:
        return name, None
    return match["kind"], int(match["block"])


def output_kind(name: str) -> str:
    """The kind of a graph output: its per-block kind, or the name itself (``logits``)."""
    return parse_output_name(name)[0]


def is_kind(name: str, *kinds: str) -> bool:
    """Whether graph output ``name`` is of one of ``kinds`` (``is_kind(n, KEPT_IDS, COUNT)``)."""
    return output_kind(name) in kinds
