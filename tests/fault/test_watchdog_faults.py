"""The host watchdog against real faults (issue 13, item 5): a real master
and slaves as processes on loopback, HA enabled through SetHaConfig, each
slave given a FIFO as its --watchdog-device (never a real one: the slaves
refuse character devices under tests). A reader thread timestamps what the
slave writes and replays it into a model of the kernel's watchdog
(tests/support/watchdog.py), which says when the host would have reset.

Settings: PING interval 1 s, dead_after 3 s, fence_after 7 s: the lease's
term is 7 - 3 - 3 = 1 s (as with the defaults, 10 - 6 - 3), the watchdog's
timeout 1 s (slave/watchdog.py, "The arithmetic"). Not the 0.5 s interval of
the HA restart fault tests: a slave's first heartbeat channel is built with
its 1 s default interval before the master's is known, so its keepalive
notices a silent master only after ~3 s while the lease assumes 1.5 s.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.support.lab import Case, Lab
from tests.support.processes import wait_until
from tests.support.watchdog import FifoWatchdog
from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import pool_service_pb2 as ps, pool_service_pb2_grpc
from xcp.v1 import vm_service_pb2 as vs
from xcp_control.slave.watchdog import GRACE

pytestmark = pytest.mark.timeout(120)

FENCE_AFTER, DEAD_AFTER = 7.0, 3.0
SETTINGS = dict(heartbeat_interval=1.0, dead_after=DEAD_AFTER, contact_timeout=2.0)
SLAVE_ARGS = ("--fence-after", str(FENCE_AFTER))
TIMEOUT = 1  # the watchdog timeout these settings give
SLACK = 0.3  # s: the slave's own scheduling, and the reader's timestamps
ARMED = re.compile(r"host watchdog \S+ armed: the host resets (\d+)s after petting stops")
GiB = 1 << 30


@pytest.fixture
def case(lab: Lab) -> Iterator[Case]:
    with lab.case() as c:
        yield c


def set_ha(master, enabled: bool) -> None:
    pool_service_pb2_grpc.PoolServiceStub(master.client.channel).SetHaConfig(
        ps.SetHaConfigRequest(enabled=enabled), timeout=5)


def armed_timeout(slave) -> int:
    found = wait_until(lambda: ARMED.search(slave.stderr_text()), 5, "the watchdog armed")
    return int(found.group(1))


def guarded_slave(case: Case, master, dog: FifoWatchdog):
    return case.slave(master, *SLAVE_ARGS, "--watchdog-device", str(dog.path))


def gaps(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def test_petted_while_acknowledged_stopped_with_the_lease_and_with_the_slave(
        lab: Lab, case: Case, tmp_path) -> None:
    master = lab.start_master(**SETTINGS)  # its own: it is stopped below
    with FifoWatchdog(tmp_path / "watchdog") as dog:
        slave = guarded_slave(case, master, dog)
        time.sleep(1.0)
        assert dog.events == []  # HA off: the device is never even opened

        set_ha(master, True)
        assert armed_timeout(slave) == TIMEOUT
        on = dog.opens()[0]
        time.sleep(2.0)
        pets = dog.pets()
        assert len(pets) >= 10 and gaps(pets) < TIMEOUT  # the host would never reset
        assert dog.kernel(TIMEOUT).fired == [] and dog.pets()[0] - on < 0.1

        set_ha(master, False)  # the magic close
        wait_until(lambda: dog.magic_closes() == 1 and dog.closes(), 5, "the magic close")
        off = time.monotonic()
        time.sleep(1.0)
        assert dog.pets(since=off) == [] and not dog.kernel(TIMEOUT).running

        set_ha(master, True)
        wait_until(lambda: len(dog.pets(since=off)) >= 5, 5, "petting again")
        time.sleep(0.5)
        master.process.freeze()
        stopped = time.monotonic()
        try:
            wait_until(lambda: "SELF-FENCING" in slave.stderr_text(), FENCE_AFTER + 3,
                       "the slave fencing itself (no peers)")
            time.sleep(1.0)
            last = max(dog.pets())
            # The lease counts from the last confirmation (the stream closes a
            # transport bound after the master's last packet) less that bound and
            # the leader's detection bound: deadline <= stopped + fence_after - dead_after.
            deadline = stopped + FENCE_AFTER - DEAD_AFTER
            assert last + TIMEOUT <= deadline + GRACE + SLACK, (last - stopped, slave.log(40))
            fired = dog.kernel(TIMEOUT).fired
            assert len(fired) == 1 and fired[0] <= deadline + GRACE + SLACK
            assert dog.pets(since=fired[0]) == []  # fenced: nothing since
        finally:
            master.process.thaw()

        back = time.monotonic()  # acknowledged again: armed again
        wait_until(lambda: len(dog.pets(since=back)) >= 5, 15, "petting after SIGCONT")
        assert dog.magic_closes(since=off) == 0
        slave.kill()
        killed = time.monotonic()
        wait_until(lambda: dog.closes(since=killed - 0.05), 2, "the kernel closing the device")
        time.sleep(1.5)
        assert dog.pets(since=killed + 0.05) == [] and dog.magic_closes(since=off) == 0
        fired = dog.kernel(TIMEOUT).fired
        assert len(fired) == 2 and killed < fired[1] <= killed + TIMEOUT + SLACK


class VmPoller:
    """Every 20 ms, the VM's record on the master: the latest question that
    still found it RUNNING on `host` bounds its restart elsewhere from below."""

    def __init__(self, master, vm: str, host: str) -> None:
        self.master, self.vm, self.host = master, vm, host
        self.still_there = 0.0  # a question sent then found it there
        self.elsewhere = 0.0  # the first answer with it RUNNING elsewhere
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "VmPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        end = time.monotonic() + 60  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < end and not self.elsewhere:
            sent = time.monotonic()
            try:
                vm = self.master.client.vms.GetVM(vs.GetVMRequest(uuid=self.vm), timeout=1)
            except grpc.RpcError:
                continue
            if vm.resident_on == self.host and vm.power_state == dm.RUNNING:
                self.still_there = sent
            elif vm.power_state == dm.RUNNING:
                self.elsewhere = time.monotonic()
            self._stop.wait(0.02)


def test_a_stopped_host_resets_before_its_vm_runs_elsewhere(lab: Lab, case: Case,
                                                             tmp_path) -> None:
    master = lab.start_master(**SETTINGS)
    set_ha(master, True)
    dogs = [FifoWatchdog(tmp_path / f"watchdog{i}") for i in range(3)]
    for dog in dogs:
        dog.__enter__()
    try:
        a, *others = [guarded_slave(case, master, dog) for dog in dogs]
        assert armed_timeout(a) == TIMEOUT
        vm = master.client.vms.CreateVM(vs.CreateVMRequest(
            name_label="guarded", memory=GiB, vcpus=1, ha_restart_priority=dm.RESTART),
            timeout=5).uuid
        master.client.vms.StartVM(vs.StartVMRequest(uuid=vm, host=a.uuid), timeout=10)
        time.sleep(0.5)
        with VmPoller(master, vm, a.uuid) as poller:
            a.freeze()
            try:
                wait_until(lambda: poller.elsewhere, FENCE_AFTER + 8, "the VM RUNNING elsewhere")
            finally:
                a.thaw()
        fired = dogs[0].kernel(TIMEOUT, until=poller.still_there).fired
        assert fired and fired[0] < poller.still_there, (fired, poller.still_there)
        print(f"host reset {poller.still_there - fired[0]:.2f}s before its VM could restart")
        for other in dogs[1:]:
            assert other.kernel(TIMEOUT).fired == []  # the healthy hosts kept petting
        # A clean stop disarms only a host without domains: the VM's new host
        # must reset, since its domain outlives a libvirt slave.
        runs_it = master.client.vm(vm).resident_on
        for slave, dog in zip(others, dogs[1:]):
            stopping = time.monotonic()
            slave.terminate()
            wait_until(lambda: dog.closes(since=stopping), 5, "the device closed")
            assert dog.magic_closes(since=stopping) == (0 if slave.uuid == runs_it else 1)
    finally:
        for dog in dogs:
            dog.__exit__(None, None, None)


def test_master_tier_down_the_watchdogs_keep_being_petted(lab: Lab, case: Case,
                                                           tmp_path) -> None:
    """Every master gone for 2 x fence_after: the liveset rule holds each
    lease, and the keepers pet the renewed leases in time, cycle after cycle:
    no host would reset (xapi's liveset rule with a watchdog armed)."""
    master = lab.start_master(**SETTINGS)
    set_ha(master, True)
    dogs = [FifoWatchdog(tmp_path / f"watchdog{i}") for i in range(2)]
    for dog in dogs:
        dog.__enter__()
    try:
        hosts = [guarded_slave(case, master, dog) for dog in dogs]
        for host in hosts:
            assert armed_timeout(host) == TIMEOUT
        time.sleep(1.0)
        master.process.kill()
        gone = time.monotonic()
        time.sleep(2 * FENCE_AFTER)
        for host, dog in zip(hosts, dogs):
            assert "SELF-FENCING" not in host.stderr_text()
            assert "keeping the domains" in host.stderr_text()  # the leases were held
            assert len(dog.opens(since=gone)) >= 5  # released and opened again, each hold
            kernel = dog.kernel(TIMEOUT)
            assert kernel.fired == [], host.log(40)
            print(f"closest the timer came to firing: {kernel.closest:.3f}s left")
    finally:
        for dog in dogs:
            dog.__exit__(None, None, None)
