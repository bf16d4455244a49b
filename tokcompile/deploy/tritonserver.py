"""The ``tritonserver`` that PyPI's nvidia-pytriton ships, run as a child process.

nvidia-pytriton (the ``serve`` extra) carries Triton Inference Server: the binary
``pytriton/tritonserver/bin/tritonserver``, the Python backend (``backends/python``:
``libtriton_python.so``, ``triton_python_backend_utils.py``), one Python-backend stub per Python
version (``python_backend_stubs/3.X/triton_python_backend_stub``) and its shared libraries
(``nvidia_pytriton.libs``). Three traps, handled here:

- its ``backends/python`` has no stub, and Triton looks for the stub beside
  ``libtriton_python.so``: a backend folder with the stub of this Python is assembled in the
  server's work folder;
- the stub links ``libpython3.X.so`` and, where this Python is not the system one (pyenv, conda,
  a venv on another base), the loader finds the system's first; the stub then fails with
  ``'_thread.RLock' object has no attribute '_recursion_count'``: ``LD_LIBRARY_PATH`` starts with
  this interpreter's ``LIBDIR``;
- the stub's interpreter does not read ``PYTHONPATH`` (``model.py`` does, see triton_entry.py):
  it is set to this process's ``sys.path``, so the models import the same tokcompile and packages.

Stopping drains first: the models are unloaded through the (token-restricted) repository API,
so new requests are refused with an error and readiness turns false while every in-flight
request is answered; then the server gets SIGTERM.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import _defaults
from ..errors import TokcompileError

logger = logging.getLogger(__name__)

CONTROL_HEADER = "tokcompile-control"  # the repository (load/unload) API needs this header's token
EXIT_TIMEOUT_S = 5  # tritonserver's own exit wait, after the drain (it waits on idle client connections)
LOG_LINES = 400  # server log lines kept for error messages
# A tokcompile log record forwarded through Triton's log by triton_model._TritonLogHandler.
MODEL_LOG = re.compile(r'^([IWE])\d{4} \S+\s+\d+ triton_model\.py:\d+\] "(.*)"$')
LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR}


@dataclass(frozen=True)
class Distribution:
    """Where nvidia-pytriton keeps the server, for this Python version."""

    binary: Path
    python_backend: Path  # libtriton_python.so, triton_python_backend_utils.py
    stub: Path
    libs: Path
    version: str  # nvidia-pytriton's


def find_server() -> Distribution:
    """The tritonserver of the installed nvidia-pytriton; TokcompileError with the install line otherwise."""
    try:
        import pytriton  # type: ignore[import-untyped]
    except ImportError:
        raise TokcompileError(
            "serving needs Triton Inference Server from nvidia-pytriton: pip install 'tokcompile[serve]'"
        ) from None
    from importlib.metadata import version

    root = Path(pytriton.__file__).parent / "tritonserver"
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = Distribution(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / python / "triton_python_backend_stub",
        libs=root.parent.parent / "nvidia_pytriton.libs",
        version=version("nvidia-pytriton"),
    )
    if not dist.binary.is_file() or not (dist.python_backend / "libtriton_python.so").is_file():
        raise TokcompileError(f"nvidia-pytriton {dist.version} has no tritonserver at '{root}'; reinstall it")
    if not dist.stub.is_file():
        shipped = ", ".join(sorted(p.name for p in dist.stub.parent.parent.iterdir())) or "none"
        raise TokcompileError(
            f"nvidia-pytriton {dist.version} has no Python-backend stub for Python {python} (it ships {shipped}); "
            "serve from one of those Python versions"
        )
    return dist


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def local_host(self) -> str:
        """Where this machine reaches the server (a wildcard address is not connectable)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    def address(self, port: int, host: Optional[str] = None) -> str:
        host = host or self.host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def http(self) -> str:
        """``host:port`` of the HTTP endpoint as a client on this machine reaches it."""
        return self.address(self.http_port, self.local_host)

    @property
    def grpc(self) -> str:
        return self.address(self.grpc_port, self.local_host)


def endpoints(
    host: Optional[str] = None,
    http_port: Optional[int] = None,
    grpc_port: Optional[int] = None,
    metrics_port: Optional[int] = None,
) -> Endpoints:
    """Resolve defaults; one-line errors for a bad host, a port out of range, reused or in use."""
    ends = Endpoints(
        _defaults.SERVE_HOST if host is None else host,
        _defaults.SERVE_HTTP_PORT if http_port is None else http_port,
        _defaults.SERVE_GRPC_PORT if grpc_port is None else grpc_port,
        _defaults.SERVE_METRICS_PORT if metrics_port is None else metrics_port,
    )
    ports = {"--http-port": ends.http_port, "--grpc-port": ends.grpc_port, "--metrics-port": ends.metrics_port}
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise TokcompileError(f"{flag} must be in 1..65535, got {port}")
    if len(set(ports.values())) < len(ports):
        raise TokcompileError(f"--http-port, --grpc-port and --metrics-port must differ, got {list(ports.values())}")
    for flag, port in ports.items():
        problem = _bind_problem(ends.host, port)
        if problem:
            raise TokcompileError(f"cannot serve on {ends.address(port)} ({problem}); choose another {flag} or --host")
    return ends


def _bind_problem(host: str, port: int) -> Optional[str]:
    """Why the server could not listen on (host, port), or None (SO_REUSEADDR as servers bind)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"--host '{host}' does not resolve: {exc.strerror}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return "port in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` now (for tests and benchmarks)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def server_environment(dist: Distribution) -> dict[str, str]:
    """This process's environment with the library path and Python path the stub needs."""
    env = dict(os.environ)
    libs = []
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if libdir and soname and (Path(libdir) / soname).is_file():
        libs.append(libdir)
    else:
        logger.warning(
            "this Python (%s) has no shared libpython in LIBDIR '%s'; Triton's Python stub will load the system's "
            "libpython%s, which may not match",
            sys.executable,
            libdir,
            sysconfig.get_python_version(),
        )
    libs.append(str(dist.libs))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    package_root = str(Path(__file__).resolve().parents[2])  # the tokcompile that runs this
    paths = [package_root] + [p for p in sys.path if p and Path(p).exists()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _backend_directory(dist: Distribution, workdir: Path) -> Path:
    """A backend folder holding the Python backend and the stub for this Python (copies, 3 MB)."""
    backends = workdir / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copyfile(dist.python_backend / name, python / name)
    shutil.copy(dist.stub, python / "triton_python_backend_stub")  # keeps the executable bit
    return backends


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the serving process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TritonServer:
    """One ``tritonserver`` process serving ``repositories`` on ``ends``; a context manager
    (start, wait until ready / stop, always)."""

    def __init__(
        self,
        repositories: Sequence[Path],
        ends: Endpoints,
        workdir: Path,
        drain_timeout_s: Optional[float] = None,
    ) -> None:
        self.dist = find_server()
        self.repositories = [Path(r).resolve() for r in repositories]
        self.ends = ends
        self.workdir = Path(workdir)
        self.drain_timeout_s = _defaults.SERVE_DRAIN_TIMEOUT_S if drain_timeout_s is None else drain_timeout_s
        self.token = secrets.token_hex(16)
        self.process: Optional[subprocess.Popen] = None
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._reader: Optional[threading.Thread] = None

    def command(self, backends: Path) -> list[str]:
        # The token keeps remote clients from loading/unloading models; local users can read it
        # from the process list, as they could stop the process anyway.
        e, restricted = self.ends, f"model-repository:{CONTROL_HEADER}={self.token}"
        return [
            str(self.dist.binary),
            *(f"--model-repository={r}" for r in self.repositories),
            f"--backend-directory={backends}",
            # Explicit control: stop() unloads the models (drain) before the server exits.
            "--model-control-mode=explicit",
            "--load-model=*",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--http-address={e.host}",
            f"--http-port={e.http_port}",
            f"--grpc-address={e.host}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics_port}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            # Python-backend shared memory regions are named; several servers share /dev/shm.
            f"--backend-config=python,shm-region-prefix-name=tokcompile{os.getpid()}{self.token[:8]}_",
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        backends = _backend_directory(self.dist, self.workdir)
        cmd = self.command(backends)
        logger.debug("tritonserver command: %s", " ".join(cmd))
        self.process = subprocess.Popen(
            cmd,
            env=server_environment(self.dist),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the serving process only; it drains
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read_log, name="tritonserver-log", daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.log.append(line)
            match = MODEL_LOG.match(line)
            if match:
                logger.log(LEVELS[match.group(1)], "%s", match.group(2).replace('\\"', '"'))
            else:
                logger.debug("tritonserver: %s", line)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def error(self) -> str:
        """The server's reason for failing, from its log (one line)."""
        text = "\n".join(self.log)
        match = re.search(r"failed to load '([^']+)' version \d+: (.*?)(?:\\n|\"$)", text, re.MULTILINE)
        if match:
            return f"model '{match.group(1)}' failed to load: {match.group(2)}".replace('\\"', '"')
        errors = [line for line in self.log if line.startswith("E") or line.startswith("error:")]
        for line in errors:
            if "Address already in use" in line or "failed to start" in line:
                return line.split("] ", 1)[-1].strip('"')
        return errors[-1].split("] ", 1)[-1].strip('"') if errors else (self.log[-1] if self.log else "no output")

    def wait_ready(
        self, timeout_s: Optional[float] = None, cancel: Optional[threading.Event] = None
    ) -> Optional[float]:
        """Block until every model is loaded and the endpoints answer; the seconds it took (None
        when ``cancel`` was set first)."""
        timeout_s = _defaults.SERVE_READY_TIMEOUT_S if timeout_s is None else timeout_s
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if cancel is not None and cancel.is_set():
                return None
            if not self.running:
                code = self.process.returncode if self.process else None
                raise TokcompileError(f"tritonserver exited (code {code}): {self._reason()}")
            if self._get("/v2/health/ready") == 200:
                return time.monotonic() - start
            time.sleep(0.1)
        raise TokcompileError(f"tritonserver was not ready after {timeout_s:.0f} s: {self._reason()}")

    def _reason(self) -> str:
        if self._reader is not None and not self.running:
            self._reader.join(timeout=5)  # the log is complete once the process is gone
        return self.error()

    def stop(self, graceful: bool = True, abort: Optional[threading.Event] = None) -> None:
        """Drain (unload the models: in-flight requests are answered, new ones refused) when
        ``graceful``, then SIGTERM; SIGKILL if it hangs. ``abort`` set: skip what is left of the drain."""
        if self.process is None:
            return
        try:
            if graceful and self.running:
                self._drain(abort)
            if self.running:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=EXIT_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not exit after SIGTERM; killing it")
                self.process.kill()
                self.process.wait(timeout=10)
        finally:
            if self.running:
                self.process.kill()
                self.process.wait(timeout=10)
            if self._reader is not None:
                self._reader.join(timeout=5)

    def _drain(self, abort: Optional[threading.Event]) -> None:
        models = [m["name"] for m in self._index() if m.get("state") == "READY"]
        for name in models:
            self._post(f"/v2/repository/models/{name}/unload")
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline and not (abort is not None and abort.is_set()) and self.running:
            states = {m["name"]: m.get("state") for m in self._index()}
            if not any(states.get(n) in ("READY", "UNLOADING") for n in models):
                return
            time.sleep(0.05)
        logger.warning("in-flight requests did not finish within %.0f s; stopping anyway", self.drain_timeout_s)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop(graceful=exc[0] is None)

    # ------------------------------------------------------------------ HTTP

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.ends.local_host, self.ends.http_port, timeout=10)

    def _get(self, path: str) -> Optional[int]:
        try:
            conn = self._connection()
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            return status
        except OSError:
            return None

    def _post(self, path: str) -> Any:
        try:
            conn = self._connection()
            conn.request("POST", path, body="{}", headers={CONTROL_HEADER: self.token})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            return json.loads(body) if body else None
        except (OSError, ValueError) as exc:
            logger.debug("tritonserver %s: %s", path, exc)
            return None

    def _index(self) -> list[dict[str, Any]]:
        index = self._post("/v2/repository/index")
        return index if isinstance(index, list) else []
