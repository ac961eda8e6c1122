"""The kernel objects behind the test hosts (tests/support/netns.py): admin commands with
a time bound, the lab's links, namespaces and nftables tables (found by their prefixes),
the per-pair ownership locks, and the removal of what a crashed run left behind.

Why a module of its own: TestHost creates and partitions one host; this is what every
host, the capability probe and the stale cleanup share about the machine itself."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
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


def run_cmd(
    argv: Sequence[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an admin command with a time bound, so a wedged `ip` cannot hang a test run."""
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT
    )
    if check and done.returncode != 0:
        fail_cmd(argv, done)
    return done


def fail_cmd(argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> None:
    """Raise TestHostError with the command and its stderr folded onto one line."""
    err = "; ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
    raise TestHostError(f"{' '.join(argv)} failed (exit {done.returncode}): {err}")


def exists_error(done: subprocess.CompletedProcess[str]) -> bool:
    """True when a command failed only because its object already exists (someone else's)."""
    return done.returncode != 0 and "File exists" in done.stderr


def pair_addresses(n: int) -> tuple[str, str]:
    """(root side, namespace side) addresses of pair n: the /30 at 198.51.100.4n."""
    if not 0 <= n < MAX_PAIRS:
        raise ValueError(f"pair number {n} outside 0..{MAX_PAIRS - 1}")
    base = TEST_NET.network_address + 4 * n
    return str(base + 1), str(base + 2)


def suffix_number(name: str, prefix: str) -> int | None:
    """The pair number in a name like xcpv3, or None when the name is not ours-shaped."""
    rest = name[len(prefix):]
    if name.startswith(prefix) and rest.isdigit():
        n = int(rest)
        return n if n < MAX_PAIRS else None
    return None


def list_links() -> list[str]:
    """Names of root-namespace links starting with xcpv."""
    out = run_cmd(["ip", "-j", "link", "show"]).stdout
    names = [link["ifname"] for link in json.loads(out or "[]")]
    return [name for name in names if name.startswith(LINK_PREFIX)]


def list_namespaces() -> list[str]:
    """Names of named network namespaces starting with xcpt-."""
    out = run_cmd(["ip", "-j", "netns", "list"]).stdout
    return [ns["name"] for ns in json.loads(out or "[]") if ns["name"].startswith(NS_PREFIX)]


def list_tables() -> list[tuple[str, str]]:
    """(family, name) of nftables tables whose name starts with xcptest."""
    tables = []
    for line in run_cmd(["nft", "list", "tables"]).stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2].startswith(TABLE_PREFIX):
            tables.append((words[1], words[2]))
    return tables


def ns_pids(ns: str) -> list[int]:
    """Pids of processes inside namespace ns (empty when it does not exist)."""
    done = run_cmd(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def kill_ns_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ns, so deleting it really frees the veth."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while (pids := ns_pids(ns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)  # bounded polling: the kernel reaps asynchronously


def remove_pair_objects(n: int | None, ns: str | None) -> None:
    """Best-effort removal of table, processes, veth and namespace of one pair."""
    if n is not None:
        run_cmd(["nft", "delete", "table", "inet", f"{TABLE_PREFIX}{n}"], check=False)
    if ns is not None:
        kill_ns_processes(ns)
    if n is not None:
        run_cmd(["ip", "link", "del", f"{LINK_PREFIX}{n}"], check=False)
    if ns is not None:
        run_cmd(["ip", "netns", "del", ns], check=False)


# ---------------------------------------------------------------- ownership locks


def run_dir() -> str:
    """Directory for the pair locks: /run (cleared at boot, like the namespaces)."""
    for path in _RUN_DIRS:
        with contextlib.suppress(OSError):
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
    raise TestHostError(f"no writable lock directory among {_RUN_DIRS}")


def try_lock(name: str) -> int | None:
    """Take the flock `name` without waiting; its fd on success, None if someone holds it."""
    fd = os.open(os.path.join(run_dir(), name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_waiting(name: str, timeout: float) -> int:
    """Take the flock `name`, polling for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (fd := try_lock(name)) is None:
        if time.monotonic() > deadline:
            raise TestHostError(f"lock {name} still held after {timeout} s")
        time.sleep(0.01)
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken by try_lock (closing the fd drops the flock)."""
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
    for link in list_links():
        classify(link, suffix_number(link, LINK_PREFIX), numbered, removed, drop_link)
    for ns in list_namespaces():
        if ns != PROBE_NS:
            classify(ns, suffix_number(ns, NS_PREFIX), numbered, removed, drop_ns)
    for family, table in list_tables():
        n = suffix_number(table, TABLE_PREFIX) if family == "inet" else None
        classify(table, n, numbered, removed, functools.partial(drop_table, family))
    for n, names in sorted(numbered.items()):
        if (fd := try_lock(f"pair-{n}.lock")) is not None:
            try:
                remove_pair_objects(n, f"{NS_PREFIX}{n}")
                removed.extend(sorted(names))
            finally:
                unlock(fd)
    cleanup_probe(removed)
    return removed


def classify(name: str, n: int | None, numbered: dict[int, set[str]],
              removed: list[str], drop: Callable[[str], Any]) -> None:
    """Group a numbered object under its pair; drop an unnumbered one (not ours to keep)."""
    if n is None:
        drop(name)
        removed.append(name)
    else:
        numbered.setdefault(n, set()).add(name)


def drop_table(family: str, name: str) -> None:
    run_cmd(["nft", "delete", "table", family, name], check=False)


def drop_link(name: str) -> None:
    run_cmd(["ip", "link", "del", name], check=False)


def drop_ns(name: str) -> None:
    kill_ns_processes(name)
    run_cmd(["ip", "netns", "del", name], check=False)


def cleanup_probe(removed: list[str]) -> None:
    """Remove a probe namespace left by a crash in can_make_test_hosts()."""
    if PROBE_NS not in list_namespaces():
        return
    if (fd := try_lock("probe.lock")) is not None:
        try:
            drop_ns(PROBE_NS)
            removed.append(PROBE_NS)
        finally:
            unlock(fd)


_stale_checked = False
_stale_lock = threading.Lock()


def cleanup_stale_once() -> None:
    """Run cleanup_stale() before this process makes its first host."""
    global _stale_checked
    with _stale_lock:
        if not _stale_checked:
            _stale_checked = True
            cleanup_stale()
