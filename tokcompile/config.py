"""``BuildConfig``: every choice of a build, resolved and validated before any weight loads.

``BuildConfig.resolve`` turns the keyword arguments of ``tokcompile.build`` (or the CLI's flags)
into one frozen value: the model (its ``ModelSpec`` read off a meta-device instance, so layer
indices, bucket lists and image sizes are checked against the real model in milliseconds), the
method's resolved config, the precision, the backend with its checked options and export
lowering, the staging options of methods with per-image token counts, and the output folder. A
mistake in any of them is a one-line ``TokcompileError`` before anything slow happens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import _defaults, outputs
from .errors import TokcompileError


@dataclass(frozen=True)
class ModelChoice:
    name: str  # as given: an alias or a timm name
    weights: str  # auto | pretrained | random | a checkpoint path
    seed: int  # for random weights
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # timm.create_model arguments
    spec: Any = None  # models.ModelSpec of the model with these arguments


@dataclass(frozen=True)
class BuildConfig:
    model: ModelChoice
    method: Any  # methods.Method
    method_config: Any  # the method's resolved config (None for method 'none')
    precision: str
    backend: Any  # backends.base.Backend, resolved (auto → the one that builds here)
    backend_options: Any  # backends.base.BuildOptions, checked by the backend
    plugins: str  # the --plugins mode asked for (the backend may export another, see lowering)
    staging: Any  # runtime.calibrate.StagingConfig for staged methods, else None
    output: Path
    force: bool = False

    @property
    def method_params(self) -> dict[str, Any]:
        return self.method_config.params() if self.method_config is not None else {}

    def fingerprint(self, weights_digest: str) -> str:
        """What makes two builds the same bundle: an existing bundle with it is rebuilt in place."""
        options = self.backend_options
        choices = {"plugins": self.plugins, "tf32": options.tf32, "target_sm": options.target_sm}
        key = json.dumps(
            [
                self.model.spec.name,
                weights_digest,
                self.method.name,
                [self.method_params, dict(self.model.kwargs), choices],
                self.precision,
                self.backend.name,
            ],
            sort_keys=True,
            default=list,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @classmethod
    def resolve(
        cls,
        model: str,
        method: Optional[str] = None,
        precision: Optional[str] = None,
        weights: Optional[str] = None,
        output: Optional[str | Path] = None,
        backend: Optional[str] = None,
        force: bool = False,
        seed: Optional[int] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        buckets: Optional[str | Sequence[int]] = None,
        max_buckets: Optional[int] = None,
        calib: Optional[str | Path] = None,
        profile: Optional[str] = None,
        plugins: Optional[str] = None,
        plugin_lib: Optional[str | Path] = None,
        timing_cache: Optional[str | Path] = None,
        max_batch: Optional[int] = None,
        target_sm: Optional[str | Sequence[int]] = None,
        tf32: Optional[bool] = None,
        **params: Any,
    ) -> BuildConfig:
        """Resolve defaults (``_defaults``) and check every argument; see ``tokcompile.build``."""
        from .backends import resolve as resolve_backend
        from .backends.base import BuildOptions
        from .methods import METHODS, get_method, resolve_config
        from .models import check_weights, model_spec
        from .ops.lowering import check_mode
        from .precision import check_precision
        from .runtime.bundle import owned_files
        from .runtime.calibrate import check_staging

        m = get_method(method or _defaults.METHOD)
        precision = precision or _defaults.PRECISION
        check_precision(precision)
        plugins = check_mode(plugins)
        requested = BuildOptions(
            max_batch=max_batch,
            timing_cache=Path(timing_cache) if timing_cache is not None else None,
            plugin_lib=Path(plugin_lib) if plugin_lib is not None else None,
            target_sm=target_sm,
            tf32=tf32,
        )
        chosen, options = resolve_backend(backend or _defaults.BACKEND, requested)
        chosen.lowering(plugins, ())  # a mode the backend cannot build is refused before any work
        staged_flags = {"--buckets": buckets, "--max-buckets": max_buckets, "--calib": calib, "--profile": profile}
        if not m.staged and any(v is not None for v in staged_flags.values()):
            given = ", ".join(k for k, v in staged_flags.items() if v is not None)
            raise TokcompileError(
                f"{given} apply to methods with per-image token counts "
                f"({', '.join(n for n, x in METHODS.items() if x.staged)}); method '{m.name}' has static counts"
            )
        weights, seed = check_weights(weights, seed)
        kwargs = dict(model_kwargs or {})
        spec = model_spec(model, **kwargs)
        method_config = resolve_config(m, spec, params)
        staging = check_staging(spec, calib, buckets, max_buckets, profile) if m.staged else None
        out = Path(output) if output is not None else Path(f"{model}-{m.name}-{precision}")
        # Outputs no build may write are refused now; whether an existing bundle is this very build
        # is known once the weights are hashed (api.build, under the output lock).
        outputs.check_directory(out, owned_files, "tokcompile bundle", force=True)
        return cls(
            ModelChoice(model, weights, seed, kwargs, spec),
            m,
            method_config,
            precision,
            chosen,
            options,
            plugins,
            staging,
            out,
            force,
        )
