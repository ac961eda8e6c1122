"""Child processes for tests and benchmarks: start, wait for a line, signal, always clean up.

`Proc` runs one command in its own session (so that it and everything it starts can be
signalled as a group). Its stdout is read by a thread into `stdout` (every line) and
`lines` (a queue, None at EOF), so a bounded `wait_line` never misses a buffered line;
its stderr goes to a file, never to a pipe that could fill and stall the process
(`merge_stderr=True` sends it to stdout instead, for scripts whose messages are read as
one stream). Every process started here is registered and killed, with its whole
group, at interpreter exit even if a test or a benchmark forgets (or fails).

The rest are the small pieces every suite needs: `wait_until` (bounded polling),
`free_port`, `popen` (a raw process killed at exit), the pids of a session, and the
environment of a child without the caller's XCP_* client settings.

Usage::

    proc = Proc([sys.executable, "-c", "print('ready')"], "example").spawn()
    proc.wait_line("ready", timeout=10)
    proc.stop()                       # SIGCONT, SIGTERM, SIGKILL after a bound, reaped
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import re
import signal
from signal import SIGCONT, SIGKILL, SIGSTOP, SIGTERM  # Proc.signal shadows the module
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent  # the venv's console scripts sit beside python
# What a developer who followed the README may have set: never inherited by children.
CLIENT_VARS = ("XCP_MASTER", "XCP_TLS_DIR", "XCP_IDENTITY", "XCP_TOKEN", "XCP_CA_CERT")

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def register(proc: subprocess.Popen) -> None:
    """Kill `proc` (and its group) at interpreter exit unless forgotten first."""
    with _live_lock:
        _live.add(proc)


def forget(proc: subprocess.Popen) -> None:
    with _live_lock:
        _live.discard(proc)


def hard_kill(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGKILL to the process's group (it leads its own session), reaped. Linux kills a
    stopped process too; the SIGCONT after it is for a group member that was stopped
    by a job-control stop of its own."""
    if proc.poll() is None:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


@atexit.register
def kill_leftovers() -> None:
    """Kill every registered process that is still there (also run at exit)."""
    with _live_lock:
        leftovers = list(_live)
        _live.clear()
    for proc in leftovers:
        hard_kill(proc)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition",
               interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy (returned), at most `timeout`
    seconds; AssertionError naming `what` otherwise. It is always called at least once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (loopback, or a test host's address).

    Prefer `--listen 127.0.0.1:0` and the address the process reports: a port
    returned here can be taken by someone else before it is used."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default os.environ) without the caller's XCP_* client settings, unbuffered
    Python output, then `extra`."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in CLIENT_VARS}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def pinned(argv: Sequence[str], cpus: set[int] | None) -> list[str]:
    """argv under `taskset`: the affinity is set before exec, so every thread the process
    makes inherits it (a preexec_fn would fork a process full of grpc threads)."""
    if not cpus:
        return list(argv)
    return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]


class LineReader:
    """The lines of a text stream, read by a thread as they come: `lines` holds every
    one read so far, `queue` the same lines then None at EOF, and `next` waits (bounded)
    for the next one not yet taken (select() on a buffered stream can miss lines
    already buffered: hence the thread)."""

    def __init__(self, stream, name: str = "process") -> None:
        self.name = name
        self.lines: list[str] = []
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True,
                         name=f"{name}-lines").start()

    def _pump(self, stream) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.lines.append(line)
                self.queue.put(line)
        self.queue.put(None)  # EOF

    def next(self, timeout: float) -> str | None:
        """The next line (without its newline), None at end of stream;
        AssertionError if none comes within `timeout` seconds."""
        try:
            line = self.queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise AssertionError(f"{self.name}: no output for {timeout:.1f}s") from None
        if line is None:
            self.queue.put(None)  # stay at EOF
            return None
        return line.rstrip("\n")

    def text(self) -> str:
        return "".join(self.lines)


class ProcessStartError(RuntimeError):
    """The process exited, or did not say what was awaited, in time."""


class Proc:
    """One child process in its own session, started by `spawn()`.

    `cpus` pins it (taskset), `exec_prefix` wraps the final argv (a test host's
    `exec_argv`, to run it inside a network namespace). Usable as a context manager
    (stopped at exit)."""

    def __init__(self, argv: Sequence[str], name: str, *, log_dir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, cpus: set[int] | None = None,
                 exec_prefix: Callable[[Sequence[str]], list[str]] | None = None,
                 cwd: str | os.PathLike | None = None, merge_stderr: bool = False) -> None:
        self.name = name
        self.base_argv = list(argv)
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        # A given environment is used as it is; the default one is this process's
        # without the XCP_* client settings.
        self.environ = child_env() if env is None else {"PYTHONUNBUFFERED": "1", **env}
        self.cpus, self.exec_prefix, self.cwd = cpus, exec_prefix, cwd
        self.merge_stderr = merge_stderr
        self.proc: subprocess.Popen | None = None
        self.stderr_path: Path | None = None
        self.reader: LineReader | None = None  # its stdout, once spawned
        self.stopped = False  # SIGSTOPped by freeze()

    @property
    def argv(self) -> list[str]:
        full = pinned(self.base_argv, self.cpus)
        return self.exec_prefix(full) if self.exec_prefix else full

    def spawn(self) -> "Proc":
        """Start the process; it does not wait for anything."""
        assert not self.running, f"{self.name} is already running"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stopped = False
        fd, path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".stderr", dir=self.log_dir)
        self.stderr_path = Path(path)
        with os.fdopen(fd, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if self.merge_stderr else err, env=self.environ,
                cwd=self.cwd, text=True, errors="replace", start_new_session=True)
        register(self.proc)
        self.reader = LineReader(self.proc.stdout, f"{self.name}-{self.proc.pid}")
        return self

    @property
    def stdout(self) -> list[str]:
        """Every stdout line read so far (with its newline)."""
        return self.reader.lines if self.reader else []

    @property
    def lines(self) -> queue.Queue:
        """The stdout lines as they come, then None at EOF (for a consumer of its own)."""
        assert self.reader is not None, f"{self.name} was not spawned"
        return self.reader.queue

    def next_line(self, timeout: float) -> str | None:
        """The next stdout line not yet taken (without its newline), None at EOF;
        AssertionError when none comes within `timeout` seconds."""
        assert self.reader is not None, f"{self.name} was not spawned"
        return self.reader.next(timeout)

    def wait_line(self, pattern: str | re.Pattern, timeout: float) -> Any:
        """The first coming stdout line that starts with `pattern` (its rest, stripped),
        or that matches the regex `pattern` (the match); ProcessStartError when the
        process exits or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.next_line(left)
            except AssertionError:
                raise ProcessStartError(f"{self.name}: no line {_shown(pattern)} within "
                                        f"{timeout:.1f}s\n{self.output_tail()}") from None
            if line is None:
                code = self.proc.wait(timeout=5) if self.proc else None
                raise ProcessStartError(f"{self.name} exited ({code}) before "
                                        f"{_shown(pattern)}\n{self.output_tail()}")
            if isinstance(pattern, str):
                if line.startswith(pattern):
                    return line[len(pattern):].strip()
            elif (match := pattern.search(line)):
                return match

    # -- signals -------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send `sig` to the process (not its group); a gone process is not an error."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        if sig == SIGSTOP:
            self.stopped = True
        elif sig == SIGCONT:
            self.stopped = False

    def freeze(self) -> None:
        self.signal(SIGSTOP)

    def thaw(self) -> None:
        self.signal(SIGCONT)

    def kill(self, sig: int = SIGKILL, timeout: float = 10.0) -> int | None:
        """Send `sig`; for SIGKILL and SIGTERM also wait (bounded: then SIGKILL its group)
        and return the exit status (negative signal number when killed by one). A
        SIGTERM is preceded by SIGCONT (a stopped process acts on it only once it runs);
        a SIGKILL is not (it kills a stopped process as it is). Idempotent."""
        if not self.running:
            self._forget()
            return self.returncode
        if sig not in (SIGKILL, SIGTERM):
            self.signal(sig)
            return None
        if sig == SIGTERM:
            self.thaw()
        self.signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hard_kill(self.proc, timeout)
            return self.proc.poll()
        finally:
            self._forget()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (a clean shutdown) and wait for it; the exit status (TimeoutExpired
        when it does not exit within `timeout`: the caller asserts a clean stop)."""
        assert self.proc is not None
        self.thaw()
        self.signal(SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._forget()
        return code

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it is still there after `timeout`. Idempotent; the
        exit status."""
        if self.proc is None:
            return None
        return self.kill(SIGTERM, timeout=timeout)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its return code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._forget()
        return code

    def _forget(self) -> None:
        if self.proc is not None:
            forget(self.proc)

    # -- state and output ------------------------------------------------------------

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

    def stdout_text(self) -> str:
        return "".join(self.stdout)

    def stderr_text(self) -> str:
        if self.stderr_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    def output_tail(self, lines: int = 40) -> str:
        """The last lines of stderr (and of stdout), for a failure message."""
        err = self.stderr_text().splitlines()[-lines:]
        out = self.stdout[-lines:]
        return (f"--- {self.name} stderr (last {len(err)} lines)\n" + "\n".join(err)
                + f"\n--- {self.name} stdout (last {len(out)} lines)\n" + "".join(out))

    def __enter__(self) -> "Proc":
        return self if self.proc is not None else self.spawn()

    def __exit__(self, *exc) -> None:
        self.stop()


def _shown(pattern: str | re.Pattern) -> str:
    return repr(pattern if isinstance(pattern, str) else pattern.pattern)


@contextlib.contextmanager
def popen(argv: Sequence[str], **kwargs) -> Iterator[subprocess.Popen]:
    """A raw process in its own session (the caller chooses its pipes), killed with its
    whole group at exit."""
    kwargs.setdefault("start_new_session", True)
    proc = subprocess.Popen(list(argv), **kwargs)
    register(proc)
    try:
        yield proc
    finally:
        hard_kill(proc, timeout=10)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
        forget(proc)


def session_pids(sid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            found.append(int(entry.name))
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (one we started: it leads it)."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
