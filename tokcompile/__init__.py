"""tokcompile: compile timm ViTs with token reduction into fast, deployable bundles.

import tokcompile
result = tokcompile.build("deit_s", method="evit", precision="fp32", output="out/")
runner = tokcompile.load(result.bundle)
logits = runner(images)          # numpy float32 [B, 3, H, W] -> [B, classes]
"""

from ._version import __version__
from .errors import TokcompileError

__all__ = ["TokcompileError", "__version__", "build", "load"]


def __getattr__(name: str):
    # Lazy: `import tokcompile` stays cheap (no torch import) for the CLI's --help and errors.
    if name == "build":
        from .api import build

        return build
    if name == "load":
        from .runtime.runner import load

        return load
    if name == "BuildResult":
        from .api import BuildResult

        return BuildResult
    raise AttributeError(name)
