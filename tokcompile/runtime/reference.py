"""The eager model a bundle was built from, rebuilt from its manifest (compare, eval, bench).

The weights are recreated from the manifest's record (or read from a checkpoint path given for
a machine where the recorded one does not exist) and must hash to the recorded digest, so the
reference is provably the model the bundle was made of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import TokcompileError
from ..manifest import Manifest


def rebuild(
    manifest: Manifest,
    method: Optional[str] = None,
    precision: Optional[str] = None,
    weights: Optional[str] = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """(GraphModule, ModelSpec, pass info) of the bundle's reduced model, or of its dense twin with
    ``method='none'``, in ``precision`` (default the bundle's)."""
    from ..methods import adapt_checkpoint, apply_method, get_method, resolve_config
    from ..models import create_model

    record = manifest.weights
    if weights is None and record.source == "file" and not Path(record.path or "").is_file():
        raise TokcompileError(
            f"the checkpoint this bundle was built from, '{record.path}', is not on this machine; "
            "pass a copy of it with --weights PATH"
        )
    source = weights if weights is not None else record.path if record.source == "file" else record.source
    model, spec, got, method_state = create_model(
        manifest.model.timm_name,
        weights=source,
        seed=record.seed,
        checkpoint_adapter=adapt_checkpoint,
        **manifest.model.kwargs,
    )
    if got["digest"] != record.digest:
        if weights is not None:
            raise TokcompileError(
                f"--weights '{weights}' holds other weights than this bundle was built with (digest differs); "
                "pass the checkpoint the bundle was built from"
            )
        raise TokcompileError(
            f"the weights for this bundle ({source}) no longer match the ones it was built with; rebuild the bundle"
        )
    m = get_method(method or manifest.method.name)
    params = manifest.method.params if m.name == manifest.method.name else {}
    config = resolve_config(m, spec, params)
    gm, info = apply_method(model, spec, m, config, precision or manifest.precision, method_state=method_state)
    return gm, spec, info
