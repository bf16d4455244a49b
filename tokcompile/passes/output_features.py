"""output_features: expose the classifier's input (pooled CLS / average features).

Rewrite::

    return (logits, *rest)    →    return (logits, features, *rest)

``features`` [B, C] is the input of the ``head`` Linear (after pooling and ``fc_norm``), the
"final CLS/pooled features" ``tokcompile eval`` compares between reduced and dense models. A
model without a ``head`` module gets no ``features`` output.
"""

from __future__ import annotations

import logging

import torch.fx as fx

from .graph_outputs import append_outputs, named_outputs
from .manager import PassContext, PassResult
from .names import FEATURES

logger = logging.getLogger(__name__)


def output_features(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    if FEATURES in named_outputs(gm):
        return PassResult(gm, False)
    head = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == "head"), None)
    if head is None:
        logger.info("output_features: no 'head' module; no features output")
        return PassResult(gm, False)
    ctx.info["outputs"] = append_outputs(gm, [(FEATURES, head.args[0])], position=1)
    return PassResult(gm, True)
