"""Triton entry model written by tokcompile (copied as ``<model>/1/model.py``).

Triton's Python backend runs this file; the model itself is ``tokcompile.deploy.triton_model``:
it loads the bundle named by config.pbtxt's ``bundle`` parameter (``bundle/`` beside this file
in an exported repository) with ``tokcompile.load``, verifying every file's sha256, and runs
the same staged runner as in-process. The server's Python must import tokcompile
(``pip install tokcompile``, the version that wrote this repository or a later one).
"""

import os
import sys

# Triton's Python-backend stub starts its interpreter without reading PYTHONPATH; honour it so a
# deployer (and ``tokcompile serve``) can choose which tokcompile and packages the server imports.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

from tokcompile.deploy.triton_model import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
