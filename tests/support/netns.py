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
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from tests.support.netns_objects import (  # noqa: F401 - also this module's API
    CMD_TIMEOUT, LINK_PREFIX, MAX_PAIRS, NS_PREFIX, PEER_PREFIX, PROBE_NS, TABLE_PREFIX,
    TestHostError, cleanup_stale, cleanup_stale_once, exists_error, fail_cmd, list_links,
    list_namespaces, list_tables, lock_waiting, pair_addresses, remove_pair_objects,
    run_cmd, try_lock, unlock,
)

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
        cleanup_stale_once()
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
        in_use = set(list_links())
        order = sorted(range(MAX_PAIRS), key=lambda n: (f"{LINK_PREFIX}{n}" in in_use, n))
        for n in order:
            if (fd := try_lock(f"pair-{n}.lock")) is None:
                continue
            self._lock_fd = fd
            remove_pair_objects(n, f"{NS_PREFIX}{n}")  # leftovers of a crash, if any
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
        done = run_cmd(add_ns, check=False)
        if exists_error(done):
            return False
        if done.returncode != 0:
            fail_cmd(add_ns, done)
        add_veth = ["ip", "link", "add", "name", self.root_veth, "type", "veth",
                    "peer", "name", self.peer_veth, "netns", self.name]
        done = run_cmd(add_veth, check=False)
        if exists_error(done):
            run_cmd(["ip", "netns", "del", self.name], check=False)
            return False
        if done.returncode != 0:
            fail_cmd(add_veth, done)
        return True

    def _configure(self) -> None:
        """Address both ends of the veth and bring the links up."""
        ns = ["ip", "-n", self.name]
        run_cmd(["ip", "addr", "add", f"{self.root_ip}/30", "dev", self.root_veth])
        run_cmd(["ip", "link", "set", self.root_veth, "up"])
        run_cmd([*ns, "addr", "add", f"{self.host_ip}/30", "dev", self.peer_veth])
        run_cmd([*ns, "link", "set", self.peer_veth, "up"])
        run_cmd([*ns, "link", "set", "lo", "up"])

    def destroy(self) -> None:
        """Remove table, processes, veth and namespace; safe to call twice or half-made.

        Raises TestHostError if something is still there afterwards, because a silent
        leftover would break the next test in confusing ways.
        """
        try:
            if self.index is not None and self._lock_fd is not None:  # only what we own
                remove_pair_objects(self.index, self.name)
                self._partitioned = False
                self._verify_gone()
        finally:
            self._release()
            with _live_lock:
                _live.discard(self)

    def _verify_gone(self) -> None:
        """Check that the namespace, link and table of this pair are really gone."""
        left = [self.name] if self.name in list_namespaces() else []
        left += [self.root_veth] if self.root_veth in list_links() else []
        left += [t for _, t in list_tables() if t == self.table]
        if left:
            raise TestHostError(f"destroy left behind: {', '.join(left)}")

    def _release(self) -> None:
        """Drop the pair lock so the number can be reused."""
        if self._lock_fd is not None:
            unlock(self._lock_fd)
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
        run_cmd(["nft", "-f", "-"], stdin=self._partition_script())
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
        done = run_cmd(argv, check=False)
        if done.returncode != 0 and "No such file" not in done.stderr:
            fail_cmd(argv, done)
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
        run_cmd(["nft", "list", "tables"])
        fd = lock_waiting("probe.lock", CMD_TIMEOUT)
        try:
            _probe_namespace()
        finally:
            unlock(fd)
    except (TestHostError, OSError, subprocess.SubprocessError) as e:
        return False, f"cannot make test hosts here: {e}"
    return True, ""


def _probe_namespace() -> None:
    """Create and delete a throwaway namespace holding a veth pair."""
    run_cmd(["ip", "netns", "del", PROBE_NS], check=False)
    run_cmd(["ip", "netns", "add", PROBE_NS])
    try:
        # "name" is needed: a bare short name like "a" parses as the keyword "address".
        run_cmd(["ip", "-n", PROBE_NS, "link", "add", "name", "pa",
              "type", "veth", "peer", "name", "pb"])
    finally:
        run_cmd(["ip", "netns", "del", PROBE_NS], check=False)


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
