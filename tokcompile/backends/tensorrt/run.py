"""Run a bundle's engines: one callable per stage for ``runtime/staged.StagedRunner``.

A call picks the profile whose token count equals the feed's (a count outside every bucket uses
the catch-all profile, so nothing is truncated), sets input shapes and tensor addresses on torch
CUDA buffers and runs ``execute_async_v3`` on one CUDA stream. Both flavours share this; the
flavour creates the execution context (TensorRT for RTX compiles its kernels for this GPU there,
with a runtime cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Protocol

import numpy as np

from ...errors import TokcompileError
from ...manifest import StageEntry
from ..base import StageCall
from .profiles import pick_profile, token_inputs

# trt.DataType member name → torch dtype name (numpy has no bfloat16: such outputs come back fp32)
TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def torch_dtype(trt_dtype: Any) -> Any:
    """trt.DataType (or its member name) → torch dtype."""
    import torch

    name = getattr(trt_dtype, "name", trt_dtype)
    if name not in TRT_TO_TORCH:
        raise TokcompileError(f"TensorRT I/O type {name} is not supported by tokcompile's runner")
    return getattr(torch, TRT_TO_TORCH[name])


def to_numpy(buffer: Any) -> np.ndarray:
    """A torch tensor (any device) → numpy; bfloat16 comes back as float32 (numpy has no bf16)."""
    import torch

    if buffer.dtype == torch.bfloat16:
        buffer = buffer.float()
    return buffer.cpu().numpy()


_RUNTIMES: dict[str, tuple[Any, Any]] = {}  # module → (logger, runtime): the logger must outlive the runtime


def runtime(trt: ModuleType) -> Any:
    if trt.__name__ not in _RUNTIMES:
        trt_logger = trt.Logger(trt.Logger.WARNING)
        _RUNTIMES[trt.__name__] = (trt_logger, trt.Runtime(trt_logger))
    return _RUNTIMES[trt.__name__][1]


def load_engine(trt: ModuleType, path: Path) -> Any:
    """The deserialized ICudaEngine of ``path`` (after the manifest's compatibility checks)."""
    trt_runtime = runtime(trt)
    engine = trt_runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise TokcompileError(f"TensorRT could not deserialize '{path}' (see its log above); rebuild the bundle")
    return engine


class Contexts(Protocol):
    """How a flavour makes a stage's execution context, and what it does after each call."""

    def create(self, stage: int, engine: Any) -> Any: ...

    def after_call(self, stage: int, profile: int) -> None: ...


class PlainContexts:
    """TensorRT: an execution context with the engine's defaults; nothing after a call."""

    def create(self, stage: int, engine: Any) -> Any:
        return engine.create_execution_context()

    def after_call(self, stage: int, profile: int) -> None:
        return None


class TrtStage:
    """One stage engine as a StageCall: ``call(output_names, feed) → outputs`` (numpy in and out)."""

    def __init__(
        self,
        trt: ModuleType,
        engine: Any,
        profiles: Sequence[Mapping[str, Any]],
        tokens_of: Sequence[str],
        stream: Any,
        contexts: Contexts,
        index: int = 0,
    ):
        self.engine = engine
        self.contexts, self.index = contexts, index
        self.context = contexts.create(index, engine)
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        if engine.num_optimization_profiles != len(profiles):
            raise RuntimeError(
                f"engine has {engine.num_optimization_profiles} optimization profiles, the manifest {len(profiles)}"
            )
        self.profiles = list(profiles)
        self.token_inputs = [n for n in tokens_of if n in self.inputs]
        # [min, opt, max] dims of the first input per profile, from the engine itself
        self.max_batch = [
            int(engine.get_tensor_profile_shape(self.inputs[0], i)[2][0]) for i in range(len(self.profiles))
        ]
        self.stream = stream
        self.active: Optional[int] = None

    def __call__(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        tokens = int(feed[self.token_inputs[0]].shape[1]) if self.token_inputs else None
        index = pick_profile(self.profiles, tokens)
        batch = int(feed[self.inputs[0]].shape[0])
        if batch > self.max_batch[index]:
            raise TokcompileError(
                f"batch {batch} is above the engines' maximum {self.max_batch[index]}; run smaller batches "
                f"or rebuild with --max-batch {batch}"
            )
        device = torch.device("cuda", torch.cuda.current_device())
        handle = self.stream.cuda_stream
        buffers = {}
        with torch.cuda.stream(self.stream):
            if index != self.active:
                if not self.context.set_optimization_profile_async(index, handle):
                    raise RuntimeError(f"TensorRT refused optimization profile {index}")
                self.active = index
            for name in self.inputs:
                host = np.require(feed[name], requirements=["C", "W"])
                buffer = torch.from_numpy(host).to(device).to(self.dtypes[name])
                if not self.context.set_input_shape(name, tuple(buffer.shape)):
                    raise RuntimeError(f"TensorRT refused shape {tuple(buffer.shape)} for '{name}' (profile {index})")
                self.context.set_tensor_address(name, buffer.data_ptr())
                buffers[name] = buffer
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"output '{name}' has a data-dependent shape {shape}; not supported")
                buffer = torch.empty(shape, dtype=self.dtypes[name], device=device)
                self.context.set_tensor_address(name, buffer.data_ptr())
                buffers[name] = buffer
            if not self.context.execute_async_v3(handle):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
            results = [to_numpy(buffers[n]) for n in output_names]
        self.stream.synchronize()
        self.contexts.after_call(self.index, index)
        return results


def stage_calls(
    trt: ModuleType,
    directory: Path,
    stages: list[StageEntry],
    contexts: Contexts,
) -> list[StageCall]:
    """One TrtStage per stage engine, sharing one CUDA stream (stages run one after another)."""
    import torch

    entries = [s.engine for s in stages if s.engine is not None]
    if len(entries) != len(stages):
        raise TokcompileError(f"bundle '{directory}' lacks an engine for some stage; rebuild it")
    engines = [load_engine(trt, Path(directory) / e.file) for e in entries]
    stream = torch.cuda.Stream()
    return [
        TrtStage(trt, engine, entry.profiles, token_inputs(s), stream, contexts, k)
        for k, (engine, entry, s) in enumerate(zip(engines, entries, stages))
    ]
