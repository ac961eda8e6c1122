"""A real pool for the CLI, README, Node client and scripts/pool tests.

`RunningPool` starts an `xcp-master` (tests.support.processes.MasterProcess)
and N `xcp-slave` processes on loopback with free ports, waits (bounded)
until every slave is live, and stops everything at exit; with `tls=True` it
is a secure pool (as ./scripts/pool starts by default): a pool CA and
certificates in `root/tls` (`make_tls_dir`), every process on `--tls-dir`.
`xcp()` runs the CLI as a subprocess against it. Every process started here
is also killed at interpreter exit, so a failing test never leaves one behind.

The caller's XCP_TLS_DIR, XCP_IDENTITY, XCP_TOKEN and XCP_CA_CERT never leak into the
processes started here (a developer who followed the README has them set):
`client_env()` builds the environment of every client.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from tests.support.processes import MasterProcess
from xcp_control.security import pki

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
XCP_BIN = BIN_DIR / "xcp"
SLAVE_BIN = BIN_DIR / "xcp-slave"
SLAVE_LINE = re.compile(r"^xcp-slave: host (?P<uuid>[0-9a-f-]{36}) listening on (?P<addr>\S+)$")
START_TIMEOUT = 20.0
CLIENT_VARS = ("XCP_MASTER", "XCP_TLS_DIR", "XCP_IDENTITY", "XCP_TOKEN", "XCP_CA_CERT")
# The identities `xcp pool-init` creates: (name, kind).
CLIENTS = (("admin", "pool-admin"), ("viewer", "read-only"), ("client", "client"))

_live: set[subprocess.Popen] = set()
_lock = threading.Lock()


def _register(proc: subprocess.Popen) -> None:
    with _lock:
        _live.add(proc)


def _forget(proc: subprocess.Popen) -> None:
    with _lock:
        _live.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    with _lock:
        leftovers = list(_live)
        _live.clear()
    for proc in leftovers:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy (returned), at most
    `timeout` seconds; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def client_env(master: str | None = None, tls_dir: Path | str | None = None,
               identity: str | None = None, token: str | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an xcp / node client: `base` (default os.environ)
    without the caller's XCP_* settings, then these."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in CLIENT_VARS}
    for name, value in (("XCP_MASTER", master), ("XCP_TLS_DIR", tls_dir),
                        ("XCP_IDENTITY", identity), ("XCP_TOKEN", token)):
        if value:
            env[name] = str(value)
    return env


def make_tls_dir(path: Path) -> pki.TlsDir:
    """A pool CA with the master's and the clients' certificates, as
    `xcp pool-init --tls-dir path` makes them (in-process: faster)."""
    tls = pki.TlsDir(path)
    pki.create_ca(tls)
    pki.issue(tls, tls.master(), "master", "master")
    for name, kind in CLIENTS:
        pki.issue(tls, tls.client(name), name, kind)
    return tls


def host_identity(tls: pki.TlsDir, state_dir: Path) -> str:
    """Give the slave of `state_dir` its uuid before its first start, and a
    certificate for it (kept when it has one)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "host-uuid"
    if not path.exists():
        path.write_text(f"{uuid.uuid4()}\n")
    host_uuid = path.read_text().strip()
    if not tls.host(host_uuid).cert.exists():
        pki.issue(tls, tls.host(host_uuid), host_uuid, "host")
    return host_uuid


class LineReader:
    """Lines of a text stream, read by a thread, with a bounded wait for the
    next one (select() on a buffered stream can miss lines already buffered)."""

    _EOF = object()

    def __init__(self, stream) -> None:
        import queue
        self._queue: "queue.Queue" = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):
            pass
        self._queue.put(self._EOF)

    def next(self, timeout: float) -> str | None:
        """The next line (without its newline), None at end of stream;
        AssertionError if none comes within `timeout` seconds."""
        import queue
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise AssertionError(f"no output for {timeout:.1f}s") from None
        if item is self._EOF:
            self._queue.put(self._EOF)  # stay at EOF
            return None
        self.lines.append(item)
        return item.rstrip("\n")


class SlaveProcess:
    """One `xcp-slave` on 127.0.0.1:0 with its own state dir."""

    def __init__(self, master: str, name: str, state_dir: Path, log_dir: Path,
                 extra_args: Sequence[str] = ()) -> None:
        self.master, self.name, self.state_dir = master, name, state_dir
        self.log_path = log_dir / f"{name}.log"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.uuid = ""
        self.address = ""

    def start(self, timeout: float = START_TIMEOUT) -> "SlaveProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(SLAVE_BIN), "--master", self.master, "--listen", "127.0.0.1:0",
                "--name", self.name, "--state-dir", str(self.state_dir), *self.extra_args]
        env = dict(client_env(), PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        _register(self.proc)
        try:
            wait_until(self._listening, timeout, what=f"{self.name} to listen")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.name} did not start:\n{self.log()}") from None
        return self

    def _listening(self) -> bool:
        for line in self.log().splitlines():
            match = SLAVE_LINE.match(line.strip())
            if match:
                self.uuid, self.address = match["uuid"], match["addr"]
                return True
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def metrics_url(self) -> str:
        """http://HOST:PORT/metrics (--metrics-listen), or "" without it."""
        for line in self.log().splitlines():
            if line.startswith("xcp-slave: metrics on "):
                return line.split()[-1]
        return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig`; SIGKILL and SIGTERM are also reaped (bounded)."""
        if not self.running:
            return
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            _forget(self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.kill(signal.SIGTERM)
        _forget(self.proc)


class RunningPool:
    """A master and `slaves` slaves (host1..hostN) under `root`; mutual TLS
    with the certificates of `root/tls` when `tls` is true."""

    def __init__(self, root: Path, slaves: int = 3,
                 master_args: Sequence[str] = (), tls: bool = False,
                 slave_args: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_dir(self.root / "tls") if tls else None
        tls_args = ["--tls-dir", str(self.tls.path)] if self.tls else []
        self.master = MasterProcess(self.root / "pool.db", log_dir=self.root,
                                    extra_args=[*master_args, *tls_args],
                                    env=client_env())
        self.count = slaves
        self.slave_args = list(slave_args)
        self.slaves: dict[str, SlaveProcess] = {}

    @property
    def address(self) -> str:
        return self.master.address

    @property
    def tls_dir(self) -> Path | None:
        return self.tls.path if self.tls else None

    def env(self, identity: str | None = None, token: str | None = None) -> dict[str, str]:
        """The environment of a client of this pool (XCP_MASTER, XCP_TLS_DIR)."""
        return client_env(self.address, self.tls_dir, identity, token)

    def start(self) -> "RunningPool":
        try:
            self.master.start()
            for i in range(1, self.count + 1):
                name = f"host{i}"
                state = self.root / "slaves" / name
                extra: list[str] = list(self.slave_args)
                if self.tls:
                    host_identity(self.tls, state)
                    extra += ["--tls-dir", str(self.tls.path)]
                self.slaves[name] = SlaveProcess(self.address, name, state, self.root,
                                                 extra_args=extra).start()
            self.wait_live({s.uuid for s in self.slaves.values()})
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for slave in self.slaves.values():
            slave.stop()
        self.master.stop()

    def __enter__(self) -> "RunningPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- views through the CLI ------------------------------------------------

    def xcp(self, *args: str, timeout: float = 60.0, identity: str | None = None,
            token: str | None = None, **kwargs) -> subprocess.CompletedProcess:
        """`xcp ARGS` as a client of this pool (as admin, on a secure one)."""
        kwargs.setdefault("env", self.env(identity, token))
        return xcp(*args, timeout=timeout, **kwargs)

    def live(self) -> dict[str, bool]:
        """host uuid -> live, as host-list --json reports it."""
        result = self.xcp("host-list", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        return {m["host"]: m["live"] for m in doc["host_metrics"]}

    def wait_live(self, hosts: set[str], live: bool = True, timeout: float = 15.0) -> None:
        wait_until(lambda: all(self.live().get(h) is live for h in hosts), timeout,
                   interval=0.1, what=f"hosts {sorted(hosts)} live={live}")


def xcp(*args: str, master: str | None = None, timeout: float = 60.0,
        env: dict[str, str] | None = None, input: str | None = None,
        tls_dir: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run the `xcp` console script (text, captured, bounded). Without `env`:
    the client_env() of `master` and `tls_dir` (plaintext without one)."""
    full_env = dict(client_env(tls_dir=tls_dir) if env is None else env)
    if master is not None:
        full_env["XCP_MASTER"] = master
    return subprocess.run([str(XCP_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


@contextlib.contextmanager
def popen(argv: Sequence[str], **kwargs) -> Iterator[subprocess.Popen]:
    """A process in its own session, killed (with its whole group) at exit."""
    kwargs.setdefault("start_new_session", True)
    proc = subprocess.Popen(list(argv), **kwargs)
    _register(proc)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
        _forget(proc)


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
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# -- Node.js ------------------------------------------------------------------------

NODE_DIR = REPO / "clients" / "node"


def node_or_skip() -> str:
    """The node binary with the client's packages installed; skip (with the
    reason) when node or npm is missing, except under CI, where it fails."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    missing = [n for n, p in (("node", node), ("npm", npm)) if p is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed: the Node.js client is not tested"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: this must not skip)")
        pytest.skip(reason)
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return node


# -- ./scripts/pool ---------------------------------------------------------------------

POOL_SCRIPT = REPO / "scripts" / "pool"
BANNER_END = "Ctrl-C stops the pool."
BANNER_HOST = re.compile(r"^\s+(?P<name>host\d+)\s+(?P<addr>127\.0\.0\.1:\d+)\s+pid (?P<pid>\d+)"
                         r"\s+uuid (?P<uuid>[0-9a-f-]{36})$")
BANNER_MASTER = re.compile(r"^\s+master\s+(?P<addr>127\.0\.0\.1:\d+)\s+pid (?P<pid>\d+)")
BANNER_TOKENS = re.compile(r"^\s+tokens\s+(?P<addr>127\.0\.0\.1:\d+)\s")


class PoolScript:
    """`./scripts/pool` as a process in its own session (so that everything it
    starts can be found, and killed, by session id). Secure (its default)
    unless `extra` holds --insecure."""

    def __init__(self, state_dir: Path, port: int = 0, slaves: int = 3,
                 extra: Sequence[str] = ()) -> None:
        self.state_dir = Path(state_dir)
        self.secure = "--insecure" not in extra
        # The token endpoint on any free port: port + 1, the script's default,
        # may be taken on a busy machine.
        tokens = ["--token-port", "0"] if self.secure and "--token-port" not in extra else []
        self.argv = [str(POOL_SCRIPT), "--port", str(port), "--slaves", str(slaves),
                     "--state-dir", str(self.state_dir), *tokens, *extra]
        self.proc: subprocess.Popen | None = None
        self.reader: LineReader | None = None
        self.address = ""
        self.token_address = ""  # the master's token endpoint (secure pools)
        self.master_pid = 0
        self.hosts: dict[str, dict[str, str]] = {}  # name -> uuid, addr, pid

    def start(self, timeout: float = 300.0) -> "PoolScript":
        """Start and read its output until the banner is complete (the first
        run may install the venv: hence the generous bound)."""
        env = dict(client_env(), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        _register(self.proc)
        self.reader = LineReader(self.proc.stdout)
        try:
            self._read_banner(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _read_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("scripts/pool ended before it was up:\n" + self.text())
            if (m := BANNER_MASTER.match(line)):
                self.address, self.master_pid = m["addr"], int(m["pid"])
            elif (m := BANNER_TOKENS.match(line)):
                self.token_address = m["addr"]
            elif (m := BANNER_HOST.match(line)):
                self.hosts[m["name"]] = {"uuid": m["uuid"], "addr": m["addr"], "pid": m["pid"]}
            elif line.strip() == BANNER_END:
                return

    @property
    def tls_dir(self) -> Path | None:
        """Where the script keeps the pool's certificates (None: --insecure)."""
        return self.state_dir / "tls" if self.secure else None

    def env(self, identity: str | None = None, token: str | None = None) -> dict[str, str]:
        """The environment of a client of this pool, as the banner says."""
        return client_env(self.address, self.tls_dir, identity, token)

    def xcp(self, *args: str, timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
        return xcp(*args, timeout=timeout, env=self.env(), **kwargs)

    def readline(self, timeout: float) -> str | None:
        """The next line of output, None at EOF; AssertionError after `timeout`."""
        assert self.reader is not None
        try:
            return self.reader.next(timeout)
        except AssertionError:
            raise AssertionError(f"scripts/pool said nothing for {timeout:.0f}s:\n"
                                 f"{self.text()}") from None

    def text(self) -> str:
        return "".join(self.reader.lines) if self.reader else ""

    def rest(self, timeout: float = 10.0) -> str:
        """Read what it prints until it exits (bounded)."""
        deadline = time.monotonic() + timeout
        while self.readline(max(0.0, deadline - time.monotonic())) is not None:
            pass
        return self.text()

    @property
    def sid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session: the script leads its session

    def stop(self, sig: int = signal.SIGTERM, group: bool = False,
             timeout: float = 30.0) -> int:
        """Send `sig` to the script (or its whole process group, as a terminal's
        Ctrl-C does) and wait for it to exit; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.rest(timeout=5)
        return code

    def kill(self) -> None:
        """Last resort: SIGKILL everything in the script's session."""
        if self.proc is None:
            return
        kill_session(self.sid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        _forget(self.proc)

    def __enter__(self) -> "PoolScript":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.stop(timeout=20)
        finally:
            self.kill()
