"""Tests of tests.support.netns: test hosts are real, partitions really drop, cleanup is total.

The fault tests trust these hosts to behave like machines behind a cable that can be
pulled; if a partition answered with a reset, or a crashed run left veths behind, every
fault test built on them would be measuring the wrong thing.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.netns import TestHost, cleanup_stale, make_test_host_fixture, require_test_hosts

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)

test_host = make_test_host_fixture()

# An echo server that prints its port, then serves connections until killed.
SERVER = """
import socket, sys, threading
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""

# A client that prints ok / timeout / refused / error:<name> for one connect attempt.
CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("ok")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error:" + type(e).__name__)
"""


# ---------------------------------------------------------------- helpers


def connect(ip: str, port: int, timeout: float) -> str:
    """One connect attempt from the root namespace, classified like CLIENT does."""
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return "ok"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"error:{type(e).__name__}"


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """First stdout line of proc, waiting at most `timeout` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    return proc.stdout.readline().strip()


def stop(proc: subprocess.Popen) -> None:
    """Kill and reap a process we started (the caller's job, not destroy()'s)."""
    proc.kill()
    proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def ns_server(test_host: TestHost) -> Iterator[int]:
    """Port of a TCP listener running inside test_host on its host_ip."""
    proc = test_host.run([sys.executable, "-c", SERVER, test_host.host_ip],
                         stdout=subprocess.PIPE, text=True)
    try:
        yield int(read_line(proc, 5))
    finally:
        stop(proc)


@pytest.fixture
def root_server(test_host: TestHost) -> Iterator[int]:
    """Port of a listener in the root namespace on the host's root_ip (kernel accepts)."""
    with socket.socket() as s:
        s.bind((test_host.root_ip, 0))
        s.listen(64)
        yield s.getsockname()[1]


def connect_from_host(host: TestHost, ip: str, port: int, timeout: float) -> subprocess.Popen:
    """Start CLIENT inside host; its one stdout line is the outcome."""
    return host.run([sys.executable, "-c", CLIENT, ip, str(port), str(timeout)],
                    stdout=subprocess.PIPE, text=True)


def outcome(proc: subprocess.Popen) -> str:
    """Outcome line of a CLIENT process, bounded in time."""
    out, _ = proc.communicate(timeout=10)
    return out.strip()


def leftovers(host: TestHost) -> list[str]:
    """Which of the host's namespace, veth and table still exist, read from ip and nft."""
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10)

    found = [host.name] if host.name in run("ip", "netns", "list").stdout.split() else []
    link_exists = run("ip", "link", "show", "dev", host.root_veth).returncode == 0
    found += [host.root_veth] if link_exists else []
    found += [host.table] if host.table in run("nft", "list", "tables").stdout.split() else []
    return found


# ---------------------------------------------------------------- reachability


@pytest.mark.root
def test_root_reaches_listener_in_host(test_host: TestHost, ns_server: int) -> None:
    assert connect(test_host.host_ip, ns_server, timeout=2) == "ok"


@pytest.mark.root
def test_host_reaches_listener_in_root(test_host: TestHost, root_server: int) -> None:
    client = connect_from_host(test_host, test_host.root_ip, root_server, 2)
    assert outcome(client) == "ok"


@pytest.mark.root
def test_host_has_lo_and_its_address(test_host: TestHost) -> None:
    addrs = test_host.check_output(["ip", "-br", "addr"], text=True)
    assert "127.0.0.1/8" in addrs
    assert f"{test_host.host_ip}/30" in addrs


# ---------------------------------------------------------------- partition


@pytest.mark.root
def test_partition_drops_both_ways_then_heal_restores(
    test_host: TestHost, ns_server: int, root_server: int
) -> None:
    test_host.partition()
    inbound = connect_from_host(test_host, test_host.root_ip, root_server, 1)
    started = time.monotonic()
    assert connect(test_host.host_ip, ns_server, timeout=1) == "timeout"
    assert time.monotonic() - started >= 0.9  # the SYN vanished: no reset, no refusal
    assert outcome(inbound) == "timeout"

    test_host.heal()
    assert connect(test_host.host_ip, ns_server, timeout=2) == "ok"
    assert outcome(connect_from_host(test_host, test_host.root_ip, root_server, 2)) == "ok"


@pytest.mark.root
def test_partition_stalls_an_established_connection_without_resetting_it(
    test_host: TestHost, ns_server: int
) -> None:
    with socket.create_connection((test_host.host_ip, ns_server), timeout=2) as conn:
        conn.sendall(b"a")
        assert conn.recv(1) == b"a"
        with test_host.partitioned():
            conn.sendall(b"b")  # queued locally, retransmitted into the void
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(1)
        assert not test_host.is_partitioned
        conn.settimeout(5)  # TCP retransmits (RTO backoff from 200 ms) and gets through
        assert conn.recv(1) == b"b"


@pytest.mark.root
def test_partitioned_heals_on_exception_and_partition_is_idempotent(
    test_host: TestHost, ns_server: int
) -> None:
    with pytest.raises(RuntimeError):
        with test_host.partitioned():
            test_host.partition()  # a second call replaces, never duplicates
            raise RuntimeError("boom")
    assert test_host.table not in subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert connect(test_host.host_ip, ns_server, timeout=2) == "ok"


# ---------------------------------------------------------------- cleanup


@pytest.mark.root
def test_destroy_removes_ns_veth_table_and_processes() -> None:
    require_test_hosts()
    host = TestHost().create()
    sleeper = host.run(["sleep", "30"])
    host.partition()
    assert sorted(leftovers(host)) == sorted([host.name, host.root_veth, host.table])

    host.destroy()
    assert leftovers(host) == []
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    host.destroy()  # idempotent


@pytest.mark.root
def test_cleanup_when_the_with_block_raises() -> None:
    require_test_hosts()
    with pytest.raises(ValueError):
        with TestHost() as host:
            host.partition()
            raise ValueError("test body failed")
    assert leftovers(host) == []


@pytest.mark.root
def test_concurrent_hosts_get_distinct_pairs() -> None:
    require_test_hosts()
    with TestHost() as a, TestHost() as b:
        assert a.index != b.index
        assert len({a.name, b.name, a.root_veth, b.root_veth}) == 4
        assert len({a.root_ip, a.host_ip, b.root_ip, b.host_ip}) == 4


CRASHER = """
import os, signal, sys
from tests.support.netns import TestHost
host = TestHost().create()
host.partition()
print(host.index, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no destroy: a crashed run
"""


@pytest.mark.root
def test_cleanup_stale_removes_a_crashed_runs_leftovers_only() -> None:
    require_test_hosts()
    with TestHost() as mine:
        crashed = subprocess.run([sys.executable, "-c", CRASHER], cwd=REPO,
                                 capture_output=True, text=True, timeout=30)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        ghost = TestHost()
        ghost._assign(int(crashed.stdout))
        assert len(leftovers(ghost)) == 3

        removed = cleanup_stale()
        assert set(removed) >= {ghost.name, ghost.root_veth, ghost.table}
        assert leftovers(ghost) == []
        assert len(leftovers(mine)) == 2  # a live host's namespace and veth stay


# ---------------------------------------------------------------- the skip rule


def test_require_test_hosts_skips_without_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "can_make_test_hosts", lambda: (False, "no netns here"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no netns here"):
        require_test_hosts()


def test_require_test_hosts_fails_loudly_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "can_make_test_hosts", lambda: (False, "no netns here"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no netns here"):
        require_test_hosts()


def test_require_test_hosts_passes_when_possible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "can_make_test_hosts", lambda: (True, ""))
    monkeypatch.setenv("CI", "true")
    require_test_hosts()


def test_can_make_test_hosts_matches_this_machine() -> None:
    ok, reason = netns.can_make_test_hosts()
    if os.geteuid() != 0:
        assert not ok and "root" in reason
    else:
        assert ok == (reason == "")


def test_pair_addresses_are_the_documented_slash30s() -> None:
    assert netns.pair_addresses(0) == ("198.51.100.1", "198.51.100.2")
    assert netns.pair_addresses(3) == ("198.51.100.13", "198.51.100.14")
    assert netns.pair_addresses(63) == ("198.51.100.253", "198.51.100.254")
    with pytest.raises(ValueError):
        netns.pair_addresses(64)
