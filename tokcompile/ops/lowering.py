"""Plugin or native lowering of token-op nodes: ``--plugins on|off|auto`` (DESIGN.md §2).

Every token-op node calls a model-local ONNX function (its body). A node that also carries the
attributes ``plugin_namespace``/``plugin_version`` is run by the TensorRT plugin of the same name
when one is registered; a node without them is always lowered from its body to native TensorRT
layers. ONNX Runtime runs the body either way, so the three modes give identical ORT outputs.

How the TensorRT ONNX parser decides, read in onnx/onnx-tensorrt (release commits 10.7-GA
9c69a24bc2e2 and 10.10-GA 3b9c961a4318, as mirrored in the fork gedoensmax/onnx-tensorrt):

- ``ModelImporter.cpp`` ``parseNode`` (10.7: line 173, 10.10: line 193): a node whose op_type has
  no builtin importer but names a local function is imported as a plugin only if
  ``isNodeInPluginRegistry`` finds a creator, otherwise the function body is inlined
  (``LocalFunctionImporter``). Before 10.7 (e.g. 10.1-GA 96e781103cfc, ``ModelImporter.cpp``
  line 159) the local function always won: such parsers never use our plugins.
- ``isNodeInPluginRegistry`` (``ModelImporter.cpp`` line 111 in both) reads the node attributes
  ``plugin_version`` (default "1") and ``plugin_namespace`` (default "") and asks the registry
  for exactly (op_type, version, namespace) (``importPluginCreator``, ``importerUtils.cpp``
  line 891 in 10.7: ``getCreator(name, version, namespace)``; line 893 in 10.10: string equality
  on all three over ``getAllCreatorsRecursive``). Our plugins register in namespace
  "tokcompile", so a node without the attributes is looked up in namespace "" and is not
  matched: the body is inlined. With the attributes, the plugin is used when its library is
  loaded and the body is inlined when it is not.
- A newer parser (source seen in the code index, release not identified) gates the plugin lookup
  on ``attrs.count("plugin_namespace")`` (or the ENABLE_PLUGIN_OVERRIDE parser flag) and then
  falls back to the local function: the same outcome for our nodes.
- Plugin fields (``onnxOpImporters.cpp`` ``loadFields``, 10.7: line 6414, 10.10: line 6517, loop
  at 6521): the parser iterates over the CREATOR's ``getFieldNames()`` and passes each node
  attribute of that name (ONNX INT → kINT32, FLOAT → kFLOAT32, STRING → kCHAR). Attributes the
  creator does not declare are never passed, so plugin_namespace/plugin_version reach the
  plugin only if its creator lists them. Hence each plugin's YAML ``attributes`` are the op's
  own attributes (EvitSelect: k, num_prefix, fuse; AtsSample: num_samples), declared int32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Optional

from .. import _defaults
from ..errors import TokcompileError
from ..manifest import Lowering, StageEntry

MODES = ("on", "off", "auto")
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")

# The mode of the export running in this context (None: _defaults.PLUGINS). A ContextVar, set only
# for the duration of one export, so no setting outlives the build that chose it.
_mode: ContextVar[Optional[str]] = ContextVar("tokcompile_plugins", default=None)


def check_mode(mode: Optional[str]) -> str:
    """``None`` → the default; anything but on/off/auto is a one-line user error."""
    mode = _defaults.PLUGINS if mode is None else mode
    if mode not in MODES:
        raise TokcompileError(f"--plugins must be on, off or auto, got '{mode}'")
    return mode


@contextmanager
def plugin_lowering(mode: Optional[str]) -> Iterator[str]:
    """Export token-op nodes inside this block with ``mode``'s plugin attributes."""
    mode = check_mode(mode)
    token = _mode.set(mode)
    try:
        yield mode
    finally:
        _mode.reset(token)


def plugin_attributes(has_plugin: bool, native: bool) -> dict[str, Any]:
    """The attributes an op's ``onnx_symbolic`` adds to its node under the current mode.

    on: every op with a plugin; off: none; auto: ops with a plugin and no exact native lowering
    (DESIGN.md §2: native layers are the default where they exist).
    """
    mode = check_mode(_mode.get())
    if has_plugin and (mode == "on" or (mode == "auto" and not native)):
        return {"plugin_namespace": _defaults.PLUGIN_NAMESPACE, "plugin_version": _defaults.PLUGIN_VERSION}
    return {}


def lowering_record(mode: str, requested: str, stages: Iterable[StageEntry]) -> Lowering:
    """``manifest.lowering``: the mode the stage files were exported with (and the ``requested``
    one when the backend changed it) and token-op node counts summed over the stage files
    (``plugin_nodes``/``native_nodes`` facts of each stage's export; fp32 twins not included)."""
    plugin: dict[str, int] = {}
    native: dict[str, int] = {}
    for stage in stages:
        for total, counts in ((plugin, stage.plugin_nodes), (native, stage.native_nodes)):
            for name, n in counts.items():
                total[name] = total.get(name, 0) + int(n)
    return Lowering(
        plugins=mode,
        plugin_nodes=dict(sorted(plugin.items())),
        native_nodes=dict(sorted(native.items())),
        requested=requested if mode != requested else None,
    )
