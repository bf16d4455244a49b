"""TensorRT layers, engine size and build time of every method against the dense model.

Builds one bundle per method and precision (random weights; the adaptive methods calibrate on
``--calib`` images, so their stages get real per-image counts and several buckets), then, for
every stage file, does what a TensorRT deployment does, with TensorRT for RTX (the real builder
and ONNX parser; engines are built ahead of time for ``--sm``, no GPU needed):

* parse it into a strongly typed network: parse ok, ``network.num_layers`` (and how many of them
  compute int64 values, i.e. shape arithmetic), plugin layers (must be 0: TensorRT for RTX 1.7's
  parser aborts on plugin layers) and the parser's "A node named ... already exists" warnings;
* build one engine with exactly the stage's planned profiles (``tensorrt_plan``: one per bucket
  plus the catch-all): build ok, seconds, engine MB, and the layers of the built engine (the
  builder's own "Layers:" listing at ProfilingVerbosity.DETAILED, which lists every profile's
  graph, divided by the number of profiles; no engine inspector is needed, which would need a
  GPU to deserialize the engine).

The table gives per-stage figures and per-bundle totals; "x dense" is a bundle's total over the
dense model's (the stages of a staged bundle together are the whole network).

    python benchmarks/trt_layers.py                                  # deit_t, every method, fp32 + fp16
    python benchmarks/trt_layers.py --model test_vit --methods evit,ats --precisions fp32
    python benchmarks/trt_layers.py --keep /tmp/bundles              # keep (and reuse) the bundles

Issue 9 goal: parser layers of every method ≤ 1.5x dense.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tokcompile

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"
ADAPTIVE = ("ats", "avit", "adavit")
ENGINE_LAYER = re.compile(r"^Name: ", re.M)
# TensorRT logs an identical message once per process, so the duplicate-name warnings of a file
# are counted by parsing it in a fresh interpreter.
_COUNT_DUPLICATES = """
import sys, tensorrt_rtx as trt
class Log(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)
        self.n = 0
    def log(self, severity, msg):
        self.n += "already exists" in msg
log = Log()
builder = trt.Builder(log)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
trt.OnnxParser(network, log).parse_from_file(sys.argv[1])
print(log.n)
"""


@dataclass
class StageFigures:
    file: str
    parsed: bool = False
    error: str = ""
    layers: int = 0
    int64_layers: int = 0
    plugin_layers: int = 0
    duplicate_names: int = 0
    profiles: int = 0
    built: bool = False
    seconds: float = 0.0
    megabytes: float = 0.0
    engine_layers: float = 0.0  # per profile: the listing holds every profile's graph


@dataclass
class BundleFigures:
    method: str
    precision: str
    stages: list[StageFigures] = field(default_factory=list)

    def total(self, key: str) -> float:
        return sum(getattr(s, key) for s in self.stages)


def _trt():
    import tensorrt_rtx as trt

    return trt


class _Log:
    """One logger for the process: TensorRT keeps the first logger it is given and ignores later ones."""

    instance = None

    def __init__(self) -> None:
        trt = _trt()

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[object, str]] = []

            def log(self, severity: object, msg: str) -> None:
                self.messages.append((severity, msg))

        self.logger = Logger()

    @classmethod
    def get(cls):
        if cls.instance is None:
            cls.instance = cls()
        return cls.instance.logger


def duplicate_warnings(path: Path) -> int:
    """The parser's "A node named ... already exists" warnings for one file."""
    done = subprocess.run([sys.executable, "-c", _COUNT_DUPLICATES, str(path)], capture_output=True, text=True)
    return int(done.stdout.strip() or -1)


def measure_stage(path: Path, plan: list[dict], sm: str, build: bool = True) -> StageFigures:
    trt = _trt()
    log = _Log.get()
    log.messages.clear()
    fig = StageFigures(path.name)
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    fig.parsed = bool(parser.parse_from_file(str(path)))
    fig.duplicate_names = duplicate_warnings(path)
    if not fig.parsed:
        fig.error = str(parser.get_error(0)) if parser.num_errors else "parse failed"
        return fig
    fig.layers = network.num_layers
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in (trt.LayerType.PLUGIN, trt.LayerType.PLUGIN_V2, trt.LayerType.PLUGIN_V3):
            fig.plugin_layers += 1
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if outs and all(t.dtype == trt.DataType.INT64 for t in outs):
            fig.int64_layers += 1
    if not build:
        return fig
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{sm}"), 0)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for entry in plan:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in entry["shapes"].items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    fig.profiles = len(plan)
    log.messages.clear()
    start = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    fig.seconds = time.perf_counter() - start
    fig.built = engine is not None
    if engine is None:
        errors = [m for s, m in log.messages if s <= trt.ILogger.Severity.ERROR]
        fig.error = (errors[0] if errors else "build failed").splitlines()[0][:200]
        return fig
    fig.megabytes = engine.nbytes / 1e6
    listing = [m for _, m in log.messages if m.startswith("Layers:")]
    fig.engine_layers = len(ENGINE_LAYER.findall(listing[-1])) / len(plan) if listing else 0.0
    return fig


def measure_bundle(bundle: Path, method: str, precision: str, sm: str, build: bool = True) -> BundleFigures:
    manifest = json.loads((bundle / "manifest.json").read_text())
    figures = BundleFigures(method, precision)
    for stage in manifest["stages"]:
        fig = measure_stage(bundle / stage["file"], stage["tensorrt_plan"], sm, build)
        figures.stages.append(fig)
        print(
            f"  {method:7s} {precision} {fig.file:12s} parse {'ok' if fig.parsed else 'FAIL'} "
            f"layers {fig.layers:5d} (int64 {fig.int64_layers:5d}) dup {fig.duplicate_names:3d} "
            f"plugins {fig.plugin_layers} build {'ok' if fig.built else 'FAIL'} ({fig.profiles} profiles) "
            f"{fig.seconds:5.1f} s {fig.megabytes:6.1f} MB engine layers/profile {fig.engine_layers:.0f}"
            + (f"  ERROR {fig.error}" if fig.error else ""),
            flush=True,
        )
    return figures


def build_bundle(model: str, method: str, precision: str, out: Path, calib: Path | None) -> Path:
    if (out / "manifest.json").exists():
        return out
    tokcompile.build(
        model,
        method=method,
        precision=precision,
        weights="random",
        output=out,
        calib=calib if method in ADAPTIVE else None,
        force=True,
    )
    return out


def table(results: list[BundleFigures]) -> str:
    dense = {r.precision: r for r in results if r.method == "none"}
    lines = [
        "| method | precision | stages | parse | build | layers (per stage) | layers | x dense | int64 layers | "
        "engine layers/profile | x dense | engine MB | x dense | build s | dup names |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = dense.get(r.precision)

        def ratio(key: str, r: BundleFigures = r, d: BundleFigures | None = d) -> str:
            return f"{r.total(key) / d.total(key):.2f}" if d and d.total(key) else "-"

        lines.append(
            f"| {r.method} | {r.precision} | {len(r.stages)} | {sum(s.parsed for s in r.stages)}/{len(r.stages)} | "
            f"{sum(s.built for s in r.stages)}/{len(r.stages)} | {' '.join(str(s.layers) for s in r.stages)} | "
            f"{int(r.total('layers'))} | {ratio('layers')} | {int(r.total('int64_layers'))} | "
            f"{r.total('engine_layers'):.0f} | {ratio('engine_layers')} | {r.total('megabytes'):.1f} | "
            f"{ratio('megabytes')} | {r.total('seconds'):.1f} | {int(r.total('duplicate_names'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_t")
    p.add_argument("--methods", default="none,evit,tome,ats,avit,adavit")
    p.add_argument("--precisions", default="fp32,fp16")
    p.add_argument("--calib", default=str(SAMPLE), help="images for the adaptive methods' buckets")
    p.add_argument("--sm", default="80", help="compute capability to build for (75, 80, 86, 89, 120)")
    p.add_argument("--keep", default=None, help="directory for the bundles (reused when present)")
    p.add_argument("--no-build", action="store_true", help="parse only")
    args = p.parse_args()
    methods = args.methods.split(",")
    if "none" not in methods:
        methods.insert(0, "none")
    calib = Path(args.calib) if args.calib else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        results = []
        for precision in args.precisions.split(","):
            for method in methods:
                out = root / f"{args.model}-{method}-{precision}"
                start = time.perf_counter()
                build_bundle(args.model, method, precision, out, calib)
                print(f"{method} {precision}: bundle in {time.perf_counter() - start:.0f} s ({out})", flush=True)
                results.append(measure_bundle(out, method, precision, args.sm, not args.no_build))
    print()
    print(f"{args.model}, TensorRT for RTX {_trt().__version__}, SM{args.sm}")
    print(table(results))
    failed = [(r.method, r.precision, s.file) for r in results for s in r.stages if not (s.parsed and s.built)]
    plugins = sum(r.total("plugin_layers") for r in results)
    print(f"parse/build failures: {failed or 'none'}; plugin layers: {int(plugins)}")
    sys.exit(1 if failed or plugins else 0)


if __name__ == "__main__":
    main()
