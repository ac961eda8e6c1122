"""Liveness against real faults (issue 3): real xcp-master and xcp-slave processes,
slaves SIGKILLed, SIGSTOPped, partitioned on a test host, stopped cleanly, and the
master restarted under live slaves.

The master runs with heartbeat interval 1 s and dead_after 3 s. Each fault is judged
twice: by polling GetHostMetrics (what a client reads) and by the Watch stream (every
live flip must be a host_metrics MOD event). Bounds are generous upper bounds (other
suites may share the 2 cores); the exact figures are the benchmarks' business.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.lab import Case, Lab
from tests.support.processes import wait_until
from xcp.v1 import event_service_pb2 as ev

pytestmark = pytest.mark.timeout(120)

HB = 1.0  # heartbeat interval
DEAD = 3.0  # dead_after
SETTINGS = dict(heartbeat_interval=HB, dead_after=DEAD, contact_timeout=2.0)


def live_flips(master, host: str) -> list[bool]:
    return [e.live for e in master.watcher.flips(host)]


def sync_to_beat(client, host: str) -> float:
    """Wait for the next heartbeat of `host` to reach the master (so that a fault
    injected now starts the silence); that beat's wall time as the master saw it."""
    def beat() -> int:
        return client.metrics(host).last_updated.ToNanoseconds()

    before = beat()
    return wait_until(lambda: (b := beat()) != before and b, 3 * HB, "a heartbeat",
                      interval=0.005) / 1e9


def test_sigkill_marks_host_not_live_at_once(lab: Lab, case: Case) -> None:
    master = lab.master(**SETTINGS)
    slave = case.slave(master)
    t0 = time.monotonic()
    slave.signal(signal.SIGKILL)
    elapsed = master.client.wait_live(slave.uuid, False, timeout=DEAD + 5, since=t0)
    print(f"SIGKILL: not live after {elapsed:.3f}s")
    assert elapsed < 1.5, f"SIGKILLed slave marked down after {elapsed:.2f}s (target 0.25s)"
    flip = master.watcher.wait_flip(slave.uuid, False, after=t0, timeout=2)
    assert flip.op == ev.MOD and flip.at - t0 < 1.5
    assert live_flips(master, slave.uuid) == [True, False]


def test_sigstop_marks_host_not_live_after_dead_after_not_before(lab: Lab, case: Case) -> None:
    master = lab.master(**SETTINGS)
    slave = case.slave(master)
    client = master.client
    last_beat = sync_to_beat(client, slave.uuid)  # the silence starts with the stop
    slave.freeze()
    t0 = time.monotonic()
    elapsed = client.wait_live(slave.uuid, False, timeout=DEAD + 5, since=t0)
    declared_wall = time.time()
    print(f"SIGSTOP: not live after {elapsed:.2f}s ({declared_wall - last_beat:.2f}s of silence)")
    assert DEAD - 0.5 <= elapsed < DEAD + 2, f"SIGSTOPped slave marked down after {elapsed:.2f}s"
    # Judged from the master's own record of the last beat: never before dead_after.
    assert declared_wall - last_beat >= DEAD - 0.1, (declared_wall, last_beat)
    flip = master.watcher.wait_flip(slave.uuid, False, after=t0, timeout=2)
    assert flip.op == ev.MOD and DEAD - 0.5 <= flip.at - t0 < DEAD + 2

    t1 = time.monotonic()
    slave.thaw()
    back = client.wait_live(slave.uuid, True, timeout=10, since=t1)
    print(f"SIGCONT: live again after {back:.2f}s")
    assert back < 3.0, f"SIGCONTed slave live again after {back:.2f}s"
    master.watcher.wait_flip(slave.uuid, True, after=t1, timeout=2)
    assert live_flips(master, slave.uuid) == [True, False, True]


def test_clean_stop_says_goodbye_and_is_not_live_at_once(lab: Lab, case: Case) -> None:
    master = lab.master(**SETTINGS)
    slave = case.slave(master)
    t0 = time.monotonic()
    slave.signal(signal.SIGTERM)
    elapsed = master.client.wait_live(slave.uuid, False, timeout=DEAD + 5, since=t0)
    print(f"SIGTERM: not live after {elapsed:.3f}s")
    assert elapsed < 1.0, f"cleanly stopped slave marked down after {elapsed:.2f}s"
    assert slave.proc.wait(timeout=10) == 0, slave.log()
    master.watcher.wait_flip(slave.uuid, False, after=t0, timeout=2)
    assert live_flips(master, slave.uuid) == [True, False]


@pytest.mark.root
def test_partition_marks_host_not_live_and_heal_brings_it_back(netns_lab: Lab,
                                                              ns_case: Case) -> None:
    master = netns_lab.master(**SETTINGS)
    slave = ns_case.slave(master)
    host = netns_lab.host
    sync_to_beat(master.client, slave.uuid)
    t0 = time.monotonic()
    host.partition()
    elapsed = master.client.wait_live(slave.uuid, False, timeout=DEAD + 5, since=t0)
    print(f"partition: not live after {elapsed:.2f}s")
    assert DEAD - 0.5 <= elapsed < DEAD + 2, f"partitioned slave marked down after {elapsed:.2f}s"
    master.watcher.wait_flip(slave.uuid, False, after=t0, timeout=2)

    t1 = time.monotonic()
    host.heal()
    back = master.client.wait_live(slave.uuid, True, timeout=15, since=t1)
    print(f"heal: live again after {back:.2f}s")
    assert back < 6.0, f"healed slave live again after {back:.2f}s\n{slave.log()}"
    master.watcher.wait_flip(slave.uuid, True, after=t1, timeout=2)
    assert live_flips(master, slave.uuid) == [True, False, True]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_master_restart_marks_no_live_host_dead(lab: Lab, case: Case, sig: int) -> None:
    old = lab.start_master(**SETTINGS)
    slaves = [case.slave(old) for _ in range(3)]
    hosts = [s.uuid for s in slaves]
    for host in hosts:  # live=true is in the database, not only in the master's memory
        old.watcher.wait_flip(host, True, after=0, timeout=5)
    address, db = old.address, old.process.db_path
    old.watcher.close()
    old.client.close()
    old.process.kill(sig)
    t0, restart_wall = time.monotonic(), time.time()

    new = lab.start_master(db=db, listen=address, **SETTINGS)  # same file, same port
    assert new.address == address
    # Poll tightly through the start-up grace and well past it: no host is ever
    # seen not live, and each is back on a heartbeat stream soon.
    back: dict[str, float] = {}
    while time.monotonic() - t0 < DEAD + 3.0:
        for host in hosts:
            metrics = new.client.metrics(host)
            assert metrics.live, f"host {host} seen not live {time.monotonic() - t0:.2f}s " \
                                 f"after the master's restart\n{case.logs()}"
            if host not in back and metrics.last_updated.ToNanoseconds() / 1e9 > restart_wall:
                back[host] = time.monotonic() - t0
        time.sleep(0.02)
    print(f"master restart: slaves back on a stream after {sorted(back.values())}")
    assert set(back) == set(hosts), f"slaves not back on a stream: {set(hosts) - set(back)}"
    assert max(back.values()) < 5.0, back
    assert new.watcher.synced.is_set() and new.watcher.error is None
    for host in hosts:
        seen = new.watcher.of(host)
        assert seen, f"no host_metrics event for {host}"
        assert all(e.live for e in seen), f"Watch saw host {host} not live: {seen}"
