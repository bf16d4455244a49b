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

from .manager import PassContext, PassResult
from .output_kept_indices import OUTPUT_META

logger = logging.getLogger(__name__)


def output_features(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    names = list(output.meta.get(OUTPUT_META, ["logits"]))
    if "features" in names:
        return PassResult(gm, False)
    head = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == "head"), None)
    if head is None:
        logger.info("output_features: no 'head' module; no features output")
        return PassResult(gm, False)
    values = output.args[0] if isinstance(output.args[0], tuple) else (output.args[0],)
    output.args = ((values[0], head.args[0], *values[1:]),)
    output.meta[OUTPUT_META] = [names[0], "features", *names[1:]]
    ctx.info["outputs"] = output.meta[OUTPUT_META]
    return PassResult(gm, True)
