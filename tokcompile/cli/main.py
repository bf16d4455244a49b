"""tokcompile: compile timm Vision Transformers with token reduction into fast bundles.

Commands:
  build    model + method → bundle directory (ONNX, manifest, report)
  compare  bundle vs the PyTorch model it came from (Polygraphy)
  bench    bundle vs the dense model, throughput and latency
  inspect  per-layer tokens, GMACs, files of a bundle
  list     known models or methods
  eval     bundle vs the dense model on an image folder: accuracy, agreement, throughput
  sweep    build + evaluate one bundle per parameter value; CSV, table, Pareto plot
  show     draw the patches each reduction layer kept or merged, on one image
  profile  measure a hardware profile: latency of one block vs token count
  export-triton  bundle → Triton Inference Server model repository
  serve    bundle → Triton Inference Server (HTTP/gRPC, dynamic batching)

Every command ends with one line: PASSED or FAILED and the time it took. A user mistake prints
one line 'tokcompile: error: ...' before FAILED and exits with 1; an internal error prints its
traceback and a 'please report' line and exits with 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Optional

from ..errors import TokcompileError
from . import bench, build, compare, export_triton, inspect, list_cmd, profile, serve, show, sweep
from . import eval as eval_cmd

COMMANDS = {
    "build": build,
    "compare": compare,
    "bench": bench,
    "inspect": inspect,
    "list": list_cmd,
    "eval": eval_cmd,
    "sweep": sweep,
    "show": show,
    "profile": profile,
    "export-triton": export_triton,
    "serve": serve,
}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 1, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"tokcompile: error: {message} (see '{self.prog} --help')\n")
        sys.exit(1)


def make_parser() -> Parser:
    # -v/-q work before or after the command; SUPPRESS keeps a sub-parser from resetting them.
    common = Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging (and graph lint after every pass)",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and results only"
    )
    parser = Parser(
        prog="tokcompile", description=__doc__, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=(module.__doc__ or name).splitlines()[0],
            description=module.__doc__,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be replaced, e.g. by pytest)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: bool, quiet: bool) -> Callable[[], None]:
    """Configure tokcompile's logger for a command; returns a function that restores it."""
    logger = logging.getLogger("tokcompile")
    saved = (list(logger.handlers), logger.level)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if verbose else "%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    # Third-party exporters log every rewrite at INFO; keep their warnings only.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    except ImportError:
        pass

    def restore() -> None:
        logger.handlers[:], _ = saved
        logger.setLevel(saved[1])

    return restore


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed as one line) and --help
        return int(exc.code or 0)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    restore = _setup_logging(verbose, quiet)
    start = time.perf_counter()
    try:
        ok = COMMANDS[args.command].run(args)
        code = 0 if ok else 1
    except TokcompileError as exc:
        sys.stderr.write(f"tokcompile: error: {exc}\n")
        ok, code = False, 1
    except KeyboardInterrupt:
        sys.stderr.write("tokcompile: interrupted\n")
        ok, code = False, 130
    except BrokenPipeError:  # `tokcompile list models | head -1`: the reader has what it wanted
        _silence_stdout()
        return 0
    except Exception:  # an internal error: keep the traceback for the report
        traceback.print_exc()
        sys.stderr.write(
            f"tokcompile: internal error in '{args.command}' (a bug, not your mistake); please report it with "
            "the traceback above and the command line\n"
        )
        ok, code = False, 2
    finally:
        restore()
    try:
        print(f"{'PASSED' if ok else 'FAILED'} ({time.perf_counter() - start:.1f} s)", flush=True)
    except BrokenPipeError:
        _silence_stdout()
    return code


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
