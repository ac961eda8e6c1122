"""Test hosts for fault tests: a network namespace on a veth pair, cut off for real.

Why: the failures xcp-control exists to survive (a peer whose packets vanish, a TCP
connection that hangs for 15 minutes) cannot be faked by killing a process, which
gives a fast "connection refused". A test host is a network namespace joined to the
root namespace by a veth pair; `partition()` drops every packet on that veth with
nftables, so peers see exactly what a pulled cable looks like.

Addresses come from 198.51.100.0/24 (TEST-NET-2, never routed), carved into /30s:
pair n has the root side 198.51.100.(4n+1) and the namespace side 198.51.100.(4n+2).
The namespace gets no default route, so a process inside can reach only its own
address, loopback and the root side of its pair (`root_ip`). A master under test must
therefore listen on 0.0.0.0 (or on each host's `root_ip`), not on 127.0.0.1.

Usage in a test module (do not add a conftest for it)::

    from tests.support.netns import TestHost, make_test_host_fixture, require_test_hosts

    test_host = make_test_host_fixture()          # a fixture named "test_host"

    def test_slave_survives_partition(test_host):
        slave = test_host.run([sys.executable, "-m", "xcp_control.slave", ...])
        try:
            with test_host.partitioned():
                ...                               # every packet on the veth is dropped
        finally:
            slave.kill()
            slave.wait(timeout=5)

    def test_two_hosts():
        require_test_hosts()                      # skip (or fail under CI) up front
        with TestHost() as a, TestHost() as b:
            ...

Ownership: every pair number n is guarded by an flock on /run/xcptest/pair-<n>.lock,
held for as long as the host lives. The kernel drops the lock when its process dies,
so `cleanup_stale()` can tell leftovers of a crashed run (lock free) from hosts of a
concurrent test process (lock held) and never destroys the latter.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

NS_PREFIX = "xcpt-"
LINK_PREFIX = "xcpv"
PEER_PREFIX = "xcpp"
TABLE_PREFIX = "xcptest"
PROBE_NS = "xcpt-probe"
TEST_NET = ipaddress.ip_network("198.51.100.0/24")
MAX_PAIRS = TEST_NET.num_addresses // 4
CMD_TIMEOUT = 10.0
KILL_TIMEOUT = 3.0

_RUN_DIRS = ("/run/xcptest", "/tmp/xcptest")


class TestHostError(RuntimeError):
    """A test host could not be created, partitioned, healed or destroyed."""

    __test__ = False  # not a pytest test class, whatever its name says


# ---------------------------------------------------------------- small helpers


def _cmd(
    argv: Sequence[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an admin command with a time bound, so a wedged `ip` cannot hang a test run."""
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT
    )
    if check and done.returncode != 0:
        _fail(argv, done)
    return done


def _fail(argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> None:
    """Raise TestHostError with the command and its stderr folded onto one line."""
    err = "; ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
    raise TestHostError(f"{' '.join(argv)} failed (exit {done.returncode}): {err}")


def _exists_error(done: subprocess.CompletedProcess[str]) -> bool:
    """True when a command failed only because its object already exists (someone else's)."""
    return done.returncode != 0 and "File exists" in done.stderr


def pair_addresses(n: int) -> tuple[str, str]:
    """(root side, namespace side) addresses of pair n: the /30 at 198.51.100.4n."""
    if not 0 <= n < MAX_PAIRS:
        raise ValueError(f"pair number {n} outside 0..{MAX_PAIRS - 1}")
    base = TEST_NET.network_address + 4 * n
    return str(base + 1), str(base + 2)


def _suffix_number(name: str, prefix: str) -> int | None:
    """The pair number in a name like xcpv3, or None when the name is not ours-shaped."""
    rest = name[len(prefix):]
    if name.startswith(prefix) and rest.isdigit():
        n = int(rest)
        return n if n < MAX_PAIRS else None
    return None


def _list_links() -> list[str]:
    """Names of root-namespace links starting with xcpv."""
    out = _cmd(["ip", "-j", "link", "show"]).stdout
    names = [link["ifname"] for link in json.loads(out or "[]")]
    return [name for name in names if name.startswith(LINK_PREFIX)]


def _list_namespaces() -> list[str]:
    """Names of named network namespaces starting with xcpt-."""
    out = _cmd(["ip", "-j", "netns", "list"]).stdout
    return [ns["name"] for ns in json.loads(out or "[]") if ns["name"].startswith(NS_PREFIX)]


def _list_tables() -> list[tuple[str, str]]:
    """(family, name) of nftables tables whose name starts with xcptest."""
    tables = []
    for line in _cmd(["nft", "list", "tables"]).stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2].startswith(TABLE_PREFIX):
            tables.append((words[1], words[2]))
    return tables


def _ns_pids(ns: str) -> list[int]:
    """Pids of processes inside namespace ns (empty when it does not exist)."""
    done = _cmd(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ns, so deleting it really frees the veth."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while (pids := _ns_pids(ns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)  # bounded polling: the kernel reaps asynchronously


def _remove_pair_objects(n: int | None, ns: str | None) -> None:
    """Best-effort removal of table, processes, veth and namespace of one pair."""
    if n is not None:
        _cmd(["nft", "delete", "table", "inet", f"{TABLE_PREFIX}{n}"], check=False)
    if ns is not None:
        _kill_ns_processes(ns)
    if n is not None:
        _cmd(["ip", "link", "del", f"{LINK_PREFIX}{n}"], check=False)
    if ns is not None:
        _cmd(["ip", "netns", "del", ns], check=False)


# ---------------------------------------------------------------- ownership locks


def _run_dir() -> str:
    """Directory for the pair locks: /run (cleared at boot, like the namespaces)."""
    for path in _RUN_DIRS:
        with contextlib.suppress(OSError):
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
    raise TestHostError(f"no writable lock directory among {_RUN_DIRS}")


def _try_lock(name: str) -> int | None:
    """Take the flock `name` without waiting; its fd on success, None if someone holds it."""
    fd = os.open(os.path.join(_run_dir(), name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_waiting(name: str, timeout: float) -> int:
    """Take the flock `name`, polling for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (fd := _try_lock(name)) is None:
        if time.monotonic() > deadline:
            raise TestHostError(f"lock {name} still held after {timeout} s")
        time.sleep(0.01)
    return fd


def _unlock(fd: int) -> None:
    """Release a lock taken by _try_lock (closing the fd drops the flock)."""
    os.close(fd)


# ---------------------------------------------------------------- stale cleanup


def cleanup_stale() -> list[str]:
    """Remove xcpt-* namespaces, xcpv* links and xcptest* tables nobody owns any more.

    Why: a test run killed by SIGKILL or a timeout runs no atexit hook, and its leftovers
    would steal pair numbers and addresses. Objects of a pair whose lock is held by a
    live process (a concurrent test run, or this one) are left alone. Returns what was
    removed, for logging.
    """
    removed: list[str] = []
    numbered: dict[int, set[str]] = {}
    for link in _list_links():
        _classify(link, _suffix_number(link, LINK_PREFIX), numbered, removed, _drop_link)
    for ns in _list_namespaces():
        if ns != PROBE_NS:
            _classify(ns, _suffix_number(ns, NS_PREFIX), numbered, removed, _drop_ns)
    for family, table in _list_tables():
        n = _suffix_number(table, TABLE_PREFIX) if family == "inet" else None
        _classify(table, n, numbered, removed, functools.partial(_drop_table, family))
    for n, names in sorted(numbered.items()):
        if (fd := _try_lock(f"pair-{n}.lock")) is not None:
            try:
                _remove_pair_objects(n, f"{NS_PREFIX}{n}")
                removed.extend(sorted(names))
            finally:
                _unlock(fd)
    _cleanup_probe(removed)
    return removed


def _classify(name: str, n: int | None, numbered: dict[int, set[str]],
              removed: list[str], drop: Callable[[str], Any]) -> None:
    """Group a numbered object under its pair; drop an unnumbered one (not ours to keep)."""
    if n is None:
        drop(name)
        removed.append(name)
    else:
        numbered.setdefault(n, set()).add(name)


def _drop_table(family: str, name: str) -> None:
    _cmd(["nft", "delete", "table", family, name], check=False)


def _drop_link(name: str) -> None:
    _cmd(["ip", "link", "del", name], check=False)


def _drop_ns(name: str) -> None:
    _kill_ns_processes(name)
    _cmd(["ip", "netns", "del", name], check=False)


def _cleanup_probe(removed: list[str]) -> None:
    """Remove a probe namespace left by a crash in can_make_test_hosts()."""
    if PROBE_NS not in _list_namespaces():
        return
    if (fd := _try_lock("probe.lock")) is not None:
        try:
            _drop_ns(PROBE_NS)
            removed.append(PROBE_NS)
        finally:
            _unlock(fd)


_stale_checked = False
_stale_lock = threading.Lock()


def _cleanup_stale_once() -> None:
    """Run cleanup_stale() before this process makes its first host."""
    global _stale_checked
    with _stale_lock:
        if not _stale_checked:
            _stale_checked = True
            cleanup_stale()


# ---------------------------------------------------------------- the test host


_live: set["TestHost"] = set()
_live_lock = threading.Lock()


class TestHost:
    """A network namespace joined to the root namespace by a veth pair.

    Attributes (set by create()): `index` (pair number n), `name` (namespace
    xcpt-<n>), `root_veth` (xcpv<n>, root side), `peer_veth` (xcpp<n>, inside the
    namespace), `root_ip` / `host_ip` (198.51.100.4n+1 / +2), `table` (the nftables
    table, family inet, that exists only while partitioned).
    """

    __test__ = False  # pytest must not collect this as a test class

    def __init__(self) -> None:
        self.index: int | None = None
        self.name: str | None = None
        self.root_veth: str | None = None
        self.peer_veth: str | None = None
        self.root_ip: str | None = None
        self.host_ip: str | None = None
        self.table: str | None = None
        self._lock_fd: int | None = None
        self._owner_pid = os.getpid()
        self._partitioned = False

    def __repr__(self) -> str:
        return f"TestHost(name={self.name!r}, host_ip={self.host_ip!r}, root_ip={self.root_ip!r})"

    # -- lifecycle

    def __enter__(self) -> "TestHost":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def create(self) -> "TestHost":
        """Make namespace, veth pair and addresses; on any failure undo what was made."""
        if self._lock_fd is not None:
            return self
        _cleanup_stale_once()
        self._owner_pid = os.getpid()
        with _live_lock:
            _live.add(self)
        try:
            self._claim_pair()
            self._configure()
        except BaseException:
            self.destroy()
            raise
        return self

    def _claim_pair(self) -> None:
        """Take the first pair number whose lock, link and namespace are all free."""
        in_use = set(_list_links())
        order = sorted(range(MAX_PAIRS), key=lambda n: (f"{LINK_PREFIX}{n}" in in_use, n))
        for n in order:
            if (fd := _try_lock(f"pair-{n}.lock")) is None:
                continue
            self._lock_fd = fd
            _remove_pair_objects(n, f"{NS_PREFIX}{n}")  # leftovers of a crash, if any
            self._assign(n)
            if self._make_pair():
                return
            self._release()
            self._assign(None)
        raise TestHostError(f"all {MAX_PAIRS} test pairs are in use")

    def _assign(self, n: int | None) -> None:
        """Fill in the names and addresses of pair n (or clear them for None)."""
        if n is None:
            self.index = self.name = self.root_veth = self.peer_veth = None
            self.table = self.root_ip = self.host_ip = None
            return
        self.index = n
        self.name = f"{NS_PREFIX}{n}"
        self.root_veth = f"{LINK_PREFIX}{n}"
        self.peer_veth = f"{PEER_PREFIX}{n}"
        self.table = f"{TABLE_PREFIX}{n}"
        self.root_ip, self.host_ip = pair_addresses(n)

    def _make_pair(self) -> bool:
        """Create the namespace and the veth (peer born inside it); False if a name is taken."""
        add_ns = ["ip", "netns", "add", self.name]
        done = _cmd(add_ns, check=False)
        if _exists_error(done):
            return False
        if done.returncode != 0:
            _fail(add_ns, done)
        add_veth = ["ip", "link", "add", "name", self.root_veth, "type", "veth",
                    "peer", "name", self.peer_veth, "netns", self.name]
        done = _cmd(add_veth, check=False)
        if _exists_error(done):
            _cmd(["ip", "netns", "del", self.name], check=False)
            return False
        if done.returncode != 0:
            _fail(add_veth, done)
        return True

    def _configure(self) -> None:
        """Address both ends of the veth and bring the links up."""
        ns = ["ip", "-n", self.name]
        _cmd(["ip", "addr", "add", f"{self.root_ip}/30", "dev", self.root_veth])
        _cmd(["ip", "link", "set", self.root_veth, "up"])
        _cmd([*ns, "addr", "add", f"{self.host_ip}/30", "dev", self.peer_veth])
        _cmd([*ns, "link", "set", self.peer_veth, "up"])
        _cmd([*ns, "link", "set", "lo", "up"])

    def destroy(self) -> None:
        """Remove table, processes, veth and namespace; safe to call twice or half-made.

        Raises TestHostError if something is still there afterwards, because a silent
        leftover would break the next test in confusing ways.
        """
        try:
            if self.index is not None and self._lock_fd is not None:  # only what we own
                _remove_pair_objects(self.index, self.name)
                self._partitioned = False
                self._verify_gone()
        finally:
            self._release()
            with _live_lock:
                _live.discard(self)

    def _verify_gone(self) -> None:
        """Check that the namespace, link and table of this pair are really gone."""
        left = [self.name] if self.name in _list_namespaces() else []
        left += [self.root_veth] if self.root_veth in _list_links() else []
        left += [t for _, t in _list_tables() if t == self.table]
        if left:
            raise TestHostError(f"destroy left behind: {', '.join(left)}")

    def _release(self) -> None:
        """Drop the pair lock so the number can be reused."""
        if self._lock_fd is not None:
            _unlock(self._lock_fd)
            self._lock_fd = None

    # -- processes

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed so that it runs inside the namespace."""
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a sequence of arguments, not a string")
        if self.name is None or self._lock_fd is None:
            raise TestHostError("test host is not created")
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start argv inside the namespace. `ip netns exec` execs, so .pid is argv's pid."""
        return subprocess.Popen(self.exec_argv(argv), **popen_kwargs)

    def check_output(
        self, argv: Sequence[str], *, timeout: float = CMD_TIMEOUT, **kwargs: Any
    ) -> Any:
        """subprocess.check_output inside the namespace, bounded by `timeout` seconds."""
        return subprocess.check_output(self.exec_argv(argv), timeout=timeout, **kwargs)

    # -- faults

    def partition(self) -> None:
        """Drop every packet on the veth, both ways, silently (a pulled cable, not a reset).

        One nft transaction: replacing the table atomically makes this idempotent.
        """
        if self.index is None or self._lock_fd is None:
            raise TestHostError("test host is not created")
        _cmd(["nft", "-f", "-"], stdin=self._partition_script())
        self._partitioned = True

    def _partition_script(self) -> str:
        """nft commands, one per line (no one-line table definitions: see GRPC-FACTS)."""
        t, dev = f"inet {self.table}", self.root_veth
        lines = [f"add table {t}", f"delete table {t}", f"add table {t}"]
        for hook in ("input", "output", "forward"):
            base = f"type filter hook {hook} priority -300; policy accept;"
            lines.append(f"add chain {t} {hook} {{ {base} }}")
        lines += [
            f'add rule {t} input iifname "{dev}" drop',
            f'add rule {t} output oifname "{dev}" drop',
            f'add rule {t} forward iifname "{dev}" drop',
            f'add rule {t} forward oifname "{dev}" drop',
        ]
        return "\n".join(lines) + "\n"

    def heal(self) -> None:
        """Delete the partition table; a no-op when not partitioned."""
        if self.table is None:
            return
        argv = ["nft", "delete", "table", "inet", self.table]
        done = _cmd(argv, check=False)
        if done.returncode != 0 and "No such file" not in done.stderr:
            _fail(argv, done)
        self._partitioned = False

    @property
    def is_partitioned(self) -> bool:
        """Whether partition() is in force (as far as this object knows)."""
        return self._partitioned

    @contextlib.contextmanager
    def partitioned(self) -> Iterator["TestHost"]:
        """Partition for the duration of the with block, healing even on an exception."""
        self.partition()
        try:
            yield self
        finally:
            self.heal()


@atexit.register
def _destroy_live_hosts() -> None:
    """Destroy hosts the caller forgot, at interpreter exit (not a forked child's exit)."""
    with _live_lock:
        hosts = [host for host in _live if host._owner_pid == os.getpid()]
    for host in hosts:
        with contextlib.suppress(Exception):
            host.destroy()


# ---------------------------------------------------------------- capability checks


_capability: tuple[bool, str] | None = None


def can_make_test_hosts() -> tuple[bool, str]:
    """(True, "") if this process can make test hosts, else (False, why not). Cached."""
    global _capability
    if _capability is None:
        _capability = _probe()
    return _capability


def _probe() -> tuple[bool, str]:
    """Check root, tools, and that a namespace with a veth and nft really work here."""
    if os.geteuid() != 0:
        return False, "test hosts need root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return False, f"test hosts need the `{tool}` command"
    try:
        _cmd(["nft", "list", "tables"])
        fd = _lock_waiting("probe.lock", CMD_TIMEOUT)
        try:
            _probe_namespace()
        finally:
            _unlock(fd)
    except (TestHostError, OSError, subprocess.SubprocessError) as e:
        return False, f"cannot make test hosts here: {e}"
    return True, ""


def _probe_namespace() -> None:
    """Create and delete a throwaway namespace holding a veth pair."""
    _cmd(["ip", "netns", "del", PROBE_NS], check=False)
    _cmd(["ip", "netns", "add", PROBE_NS])
    try:
        # "name" is needed: a bare short name like "a" parses as the keyword "address".
        _cmd(["ip", "-n", PROBE_NS, "link", "add", "name", "pa",
              "type", "veth", "peer", "name", "pb"])
    finally:
        _cmd(["ip", "netns", "del", PROBE_NS], check=False)


def _ci() -> bool:
    """True under CI (CI set and non-empty, as pytest itself reads it)."""
    return bool(os.environ.get("CI"))


def require_test_hosts() -> None:
    """Skip the calling test when test hosts are impossible here; under CI, fail instead.

    Why: CI runs as root, so a skip there means the fault tests silently stopped
    running; that must be loud.
    """
    import pytest

    ok, reason = can_make_test_hosts()
    if ok:
        return
    if _ci():
        pytest.fail(f"CI is set but test hosts cannot be made: {reason}", pytrace=False)
    pytest.skip(reason)


def make_test_host_fixture(name: str = "test_host") -> Any:
    """A pytest fixture (function scope) yielding a created TestHost, destroyed after.

    Assign it at module level: `test_host = make_test_host_fixture()`. It calls
    require_test_hosts() first, so it skips or fails by the same rule.
    """
    import pytest

    def _fixture() -> Iterator[TestHost]:
        require_test_hosts()
        with TestHost() as host:
            yield host

    _fixture.__name__ = name
    return pytest.fixture(name=name)(_fixture)


if __name__ == "__main__":  # `python -m tests.support.netns` cleans up after a crash
    print("\n".join(cleanup_stale()) or "nothing stale", file=sys.stderr)
