"""What a method's ``kept_ids_<block>`` outputs mean in a picture (``tokcompile show``).

Each method that outputs kept ids declares a ``LEGEND`` (``Method.legend``); ``verify/show.py``
draws every method the same way from it. The defaults are the generic wording (a token not kept
by a layer is pruned, and absent from every later layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Legend:
    """Labels of a patch's state in one reduction layer, and how drops carry over."""

    kept: str = "kept"  # in the layer's input and kept by it
    dropped: str = "pruned by this layer"  # in the layer's input, not kept
    # not in the layer's input: dropped by an earlier layer; None: a drop lasts one block only
    # (AdaViT: a skipped token is computed again in the next block), so panels are independent
    earlier: Optional[str] = "dropped by an earlier layer"
    noun: str = "patches kept"  # "block 3: 70/196 <noun>"
    # dropped tokens fused into one extra token (EViT): its label, and the method parameter that
    # switches fusing on (absent from the params: on)
    fused: Optional[str] = None
    fuse_param: Optional[str] = None

    @property
    def cumulative(self) -> bool:
        """Whether a token a layer did not keep is absent from every later layer."""
        return self.earlier is not None

    def fuses(self, params: Mapping[str, Any]) -> bool:
        """Whether a bundle built with method parameters ``params`` fused its dropped tokens."""
        return self.fused is not None and self.fuse_param is not None and bool(params.get(self.fuse_param, True))
