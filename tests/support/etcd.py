"""Real etcd members for tests and benchmarks: loopback ports, temporary data
directories, always cleaned up.

`EtcdCluster(n, root)` starts n members of one new cluster (etcd 3.4 from
Debian's etcd-server, /usr/bin/etcd) and waits, bounded, until a write goes
through. `urls` is the value for `xcp-master --etcd`. Members can be killed,
stopped (SIGSTOP) and started again on the same data directory; every process
is registered with the module's atexit hook, and `close()` removes the data
directories, so a failing test leaves nothing behind.

Usage::

    with EtcdCluster(3, tmp_path) as etcd:
        master = MasterProcess(..., extra_args=["--etcd", etcd.urls, ...])
        etcd.members[0].kill()
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.support.processes import free_port

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
START_TIMEOUT = 30.0

_live: set[subprocess.Popen] = set()
_lock = threading.Lock()


def available() -> bool:
    return Path(ETCD_BIN).exists()


class Member:
    """One etcd process of a cluster."""

    def __init__(self, name: str, data_dir: Path, client_port: int, peer_port: int,
                 initial_cluster: str, token: str, fsync: bool, extra: list[str],
                 client_host: str = "127.0.0.1") -> None:
        self.name, self.data_dir = name, data_dir
        self.client_url = f"http://{client_host}:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self._initial_cluster, self._token = initial_cluster, token
        self._fsync, self._extra = fsync, extra
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{name}.log"

    def argv(self) -> list[str]:
        argv = [ETCD_BIN, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self._initial_cluster,
                "--initial-cluster-state", "new", "--initial-cluster-token", self._token,
                "--max-txn-ops", "10000",
                "--logger", "zap", "--log-level", "error", *self._extra]
        if not self._fsync:
            argv.append("--unsafe-no-fsync")  # faster, for tests that kill no member
        return argv

    def start(self) -> "Member":
        assert not self.running, f"{self.name} is running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        with _lock:
            _live.add(self.proc)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with _lock:
            _live.discard(self.proc)

    @property
    def client_port(self) -> int:
        return int(self.client_url.rsplit(":", 1)[1])

    def status(self, timeout: float = 2.0) -> dict | None:
        """`etcdctl endpoint status` of this member (None if it does not answer)."""
        result = _etcdctl(self.client_url, timeout, "endpoint", "status", "-w", "json")
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)[0]["Status"]

    def member_id(self, timeout: float = 2.0) -> int:
        status = self.status(timeout)
        assert status is not None, f"{self.name} does not answer"
        return int(status["header"]["member_id"])

    def is_raft_leader(self, timeout: float = 2.0) -> bool:
        """This member leads etcd's raft (etcdctl endpoint status)."""
        status = self.status(timeout)
        return status is not None and status["leader"] == status["header"]["member_id"]

    def healthy(self, timeout: float = 2.0) -> bool:
        """A write through this member commits."""
        return _etcdctl(self.client_url, timeout, "put", "/health-check", "ok").returncode == 0


class EtcdCluster:
    """n members of a fresh cluster under `root` (a temporary dir by default)."""

    def __init__(self, n: int = 1, root: str | Path | None = None, fsync: bool = True,
                 extra: list[str] | None = None, client_host: str = "127.0.0.1") -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="xcp-etcd-") if root is None else root)
        self.root = self.root / f"etcd-{uuid.uuid4().hex[:6]}"
        self.root.mkdir(parents=True)
        names = [f"m{i + 1}" for i in range(n)]
        ports = [(free_port(), free_port()) for _ in names]
        initial = ",".join(f"{name}=http://127.0.0.1:{peer}"
                           for name, (_, peer) in zip(names, ports))
        token = f"xcp-test-{uuid.uuid4().hex[:8]}"
        self.members = [Member(name, self.root / name, client, peer, initial, token, fsync,
                               list(extra or []), client_host)
                        for name, (client, peer) in zip(names, ports)]

    @property
    def urls(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def start(self, timeout: float = START_TIMEOUT) -> "EtcdCluster":
        for member in self.members:
            if not member.running:
                member.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members:
                if member.running and member.healthy():
                    return
            if not any(m.running for m in self.members):
                break
            time.sleep(0.1)
        logs = "\n".join(m.log_path.read_text(errors="replace")[-2000:]
                         for m in self.members if m.log_path.exists())
        raise RuntimeError(f"etcd did not become healthy within {timeout}s\n{logs}")

    def raft_leader(self) -> Member | None:
        return next((m for m in self.members if m.running and m.is_raft_leader()), None)

    def move_raft_leader(self, to: Member, timeout: float = 10.0) -> None:
        """Make `to` etcd's raft leader (etcdctl move-leader), bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.raft_leader()
            if leader is to:
                return
            if leader is not None:
                _etcdctl(leader.client_url, 5.0, "move-leader", f"{to.member_id():x}")
            else:
                time.sleep(0.1)
        raise RuntimeError(f"{to.name} did not become etcd's raft leader in {timeout}s")

    def member_used_by(self, pid: int) -> Member | None:
        """The member the process `pid` has a client connection open to (a
        grpc pick_first channel holds one), or the one it has the most
        connections to (the master's lease renewals, when hedged, keep a
        channel pinned to every member besides); None if none or a tie."""
        ports = _remote_ports(pid)
        counts = sorted(((ports[m.client_port], m) for m in self.members
                         if ports.get(m.client_port)), key=lambda c: -c[0])
        if not counts or (len(counts) > 1 and counts[0][0] == counts[1][0]):
            return None
        return counts[0][1]

    def close(self) -> None:
        for member in self.members:
            member.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._own_root:
            shutil.rmtree(self.root.parent, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _etcdctl(endpoint: str, timeout: float, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ETCDCTL_BIN, "--endpoints", endpoint, f"--command-timeout={timeout}s", *args],
        capture_output=True, text=True, timeout=timeout + 5,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def _remote_ports(pid: int) -> Counter[int]:
    """Remote ports of the established TCP connections of process `pid` (its
    socket inodes matched against /proc/net/tcp and tcp6), with how many."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports: Counter[int] = Counter()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
                ports[int(fields[2].rsplit(":", 1)[1], 16)] += 1
    return ports


def _kill_leftovers() -> None:
    with _lock:
        leftovers = list(_live)
        _live.clear()
    for proc in leftovers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


atexit.register(_kill_leftovers)
