"""The TensorRT family of backends: ``tensorrt`` and ``tensorrt-rtx`` (TensorRT for RTX).

profiles.py: the optimization-profile plan (pure, no TensorRT); env.py: what this machine has;
plugins.py: the plugin library; build.py: ONNX → engine, shared by both flavours; run.py: the
engines as stage calls; flavours.py: the two backends and what differs between them.
"""

from .profiles import FALLBACK, engine_file_name, pick_profile, stage_buckets, stage_profiles, token_inputs

__all__ = ["FALLBACK", "engine_file_name", "pick_profile", "stage_buckets", "stage_profiles", "token_inputs"]
