"""The host watchdog on a stand-in device, driven by HA's real self-fencing
guard on a fake clock (no sleeping, never the real watchdog device, no reset).

The stand-in is a plain file (it records every byte a real device would get)
behind a model of the kernel's watchdog (tests/support/watchdog.py), which
says when the host would have reset: never while the lease is good, and
always by the lease deadline + GRACE once petting stops."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from tests.support.watchdog import KernelWatchdog
from xcp_control.lease import FIXED_MARGIN, REJOIN_WINDOW
from xcp_control.settings import SlaveSettings
from xcp_control.slave.ha_guard import SelfFencing
from xcp_control.slave.hypervisor import SimulatedHypervisor
from xcp_control.slave.self_fence import HaConfig
from xcp_control.slave.watchdog import (
    ARMED, GRACE, HELD, IDLE, MAGIC_CLOSE, PET, PETTED, RELEASED, STAND_IN_ONLY, GuardLease,
    HostWatchdog, NoWatchdog, WatchdogKeeper, WatchdogRefused, check_device, keeper_for,
    timeout_for)

HOST = "33333333-3333-4333-8333-333333333333"
PEERS = (("p1", "127.0.0.1:1"), ("p2", "127.0.0.1:2"))
GIB = 1 << 30
TRANSPORT = 1.5  # the guard's transport bound (3 PING intervals of 0.5 s)
# term = 4 - 1.5 - 1.5 = 1 s (as the fault tests' settings and, at 10 - 6 - 3, the defaults)
SHORT = HaConfig(enabled=True, fence_after=4.0, detect_bound=1.5, peers=PEERS)
LONELY = HaConfig(enabled=True, fence_after=4.0, detect_bound=1.5)  # no peers to ask
LONG = HaConfig(enabled=True, fence_after=10.0, detect_bound=3.0, peers=PEERS)  # term 5.5 s


class ModelledWatchdog(HostWatchdog):
    """The plain-file stand-in, each operation also told to a kernel model."""

    def __init__(self, device: str, clock) -> None:
        super().__init__(device)
        self.clock = clock
        self.kernel = KernelWatchdog()

    def _open(self) -> int:
        fd = super()._open()
        self.kernel.open(self.clock())
        return fd

    def _set_timeout(self, timeout: int) -> int:
        actual = super()._set_timeout(timeout)
        self.kernel.set_timeout(self.clock(), actual)
        return actual

    def _write(self, data: bytes) -> None:
        super()._write(data)
        self.kernel.write(self.clock(), data)

    def _close(self) -> None:
        super()._close()
        self.kernel.close(self.clock())


class Rig:
    """The slave's pieces as server.py wires them, on a fake clock."""

    def __init__(self, tmp_path: Path, peers_answer=(0, 0), answer_takes: float = 0.0) -> None:
        self.now = 100.0
        self.connected = True
        self.peers_answer, self.answer_takes, self.asked = peers_answer, answer_takes, 0
        self.hv = SimulatedHypervisor(HOST, 8 * GIB)
        self.guard = SelfFencing(HOST, self.hv, lambda: 0.0 if self.connected else None,
                                 lambda: TRANSPORT, self.ask, lambda: self.now)
        self.device = tmp_path / "watchdog"
        self.device.write_bytes(b"")
        self.dog = ModelledWatchdog(str(self.device), lambda: self.now)
        self.keeper = WatchdogKeeper(self.dog, GuardLease(self.guard), clock=lambda: self.now)
        self.actions: list[tuple[float, str]] = []

    @property
    def kernel(self) -> KernelWatchdog:
        return self.dog.kernel

    async def ask(self, peers):
        self.asked += 1
        self.now += self.answer_takes  # the peers' answer takes this long
        return self.peers_answer

    def configure(self, config: HaConfig) -> None:  # as Slave._on_ha
        self.guard.configure(config)
        self.keeper.set_ha_enabled(config.enabled)

    async def run_for(self, seconds: float) -> None:
        """The keeper's run loop, its sleeps replaced by moving the clock."""
        end = self.now + seconds
        while self.now < end:
            wake = await self.keeper.step()
            self.actions.append((self.now, self.keeper.last_action))
            self.now = max(self.now, wake)

    def done(self, *kinds: str, since: float = 0.0) -> list[float]:
        return [t for t, a in self.actions if a in kinds and t >= since]

    def fired(self) -> list[float]:
        return self.kernel.fired_by(self.now)


def run(body):
    asyncio.run(asyncio.wait_for(body(), 30))


def test_timeout_keeps_the_lease():
    assert timeout_for(1.0) == 1  # the defaults: 10 - 6 - 3
    assert timeout_for(5.5) == 5
    assert timeout_for(0.9) is None  # too short for whole seconds
    assert timeout_for(None) is None
    for term in (0.95, 1.0, 1.7, 5.5, 51.0):
        assert timeout_for(term) <= term + GRACE - 0.1  # a tick may still pet


def test_grace_stays_inside_the_leaders_margin():
    # The leader restarts no earlier than the deadline + FIXED_MARGIN (worst case):
    # the host must have reset by then, with room for the reset itself.
    assert GRACE + 0.05 <= FIXED_MARGIN


def test_never_armed_before_the_leader_says_ha_is_enabled(tmp_path):
    async def body():
        rig = Rig(tmp_path)
        await rig.run_for(2)
        rig.configure(HaConfig(enabled=False))  # disabled: a fresh slave opens nothing
        await rig.run_for(2)
        assert not rig.dog.armed and rig.done(ARMED, PETTED) == []
        assert rig.device.read_bytes() == b"" and not rig.kernel.running
    run(body)


def test_armed_once_acknowledged_and_petted_while_the_lease_is_good(tmp_path):
    async def body():
        rig = Rig(tmp_path)
        rig.configure(SHORT)
        await rig.run_for(10)
        assert rig.actions[0][1] == ARMED and rig.keeper.timeout == 1
        pets = rig.done(ARMED, PETTED)
        assert len(pets) >= 95 and max(b - a for a, b in zip(pets, pets[1:])) <= 0.11
        assert rig.fired() == [] and rig.kernel.running and rig.kernel.timeout == 1
        assert set(rig.device.read_bytes()) == set(PET)
    run(body)


def test_petting_stops_at_the_lease_deadline_and_the_host_would_reset(tmp_path):
    """Lost stream, no peers: the last pet is the release, the host resets by
    the deadline + GRACE, and nothing is petted after (fenced)."""
    async def body():
        rig = Rig(tmp_path)
        rig.configure(LONELY)
        await rig.run_for(2)
        rig.connected = False
        lost = rig.now
        deadline = rig.guard.lease.deadline()
        await rig.run_for(3)
        released = rig.done(RELEASED)
        assert len(released) == 1 and not rig.dog.armed  # the device is let go
        last = max(rig.done(ARMED, PETTED, RELEASED))
        assert last == released[0] and last + 1 <= deadline + GRACE
        assert deadline + GRACE - last - 1 <= 0.05  # as late as allowed
        assert rig.fired() == [pytest.approx(last + 1)]
        assert rig.guard.fenced and rig.done(ARMED, PETTED, since=last + 0.001) == []
        assert MAGIC_CLOSE not in rig.device.read_bytes()
        assert deadline - lost <= 1.0  # the lease's term
    run(body)


def test_a_long_term_keeps_the_timeout_under_the_deadline(tmp_path):
    async def body():
        rig = Rig(tmp_path, peers_answer=(2, 1))  # peers hear the leader: we are cut off
        rig.configure(LONG)
        await rig.run_for(3)
        assert rig.keeper.timeout == 5
        rig.connected = False
        deadline = rig.guard.lease.deadline()
        await rig.run_for(8)
        last = max(rig.done(ARMED, PETTED, RELEASED))
        assert rig.fired() == [pytest.approx(last + 5)] and last + 5 <= deadline + GRACE
        assert rig.guard.fenced
    run(body)


def test_no_pet_once_fenced_after_a_stop(tmp_path):
    """SIGSTOPped past its lease: on waking the guard fences first; no pet."""
    async def body():
        rig = Rig(tmp_path, peers_answer=(2, 1))
        rig.configure(SHORT)
        await rig.run_for(1)
        before = len(rig.device.read_bytes())
        rig.now += 10.0  # stopped: the kernel model resets the host meanwhile
        await rig.run_for(0.5)
        assert rig.guard.fenced and len(rig.device.read_bytes()) == before
        assert rig.done(ARMED, PETTED, since=rig.now - 0.6) == [] and len(rig.fired()) == 1
    run(body)


def test_renewed_lease_re_arms(tmp_path):
    async def body():
        rig = Rig(tmp_path)
        rig.configure(LONELY)
        await rig.run_for(1)
        rig.connected = False
        await rig.run_for(2)
        assert rig.guard.fenced and not rig.dog.armed
        rig.connected = True  # acknowledged again
        back = rig.now
        await rig.run_for(1)
        assert rig.done(ARMED, since=back) and not rig.guard.fenced and rig.dog.armed
    run(body)


def test_master_tier_down_the_renewed_lease_is_petted_in_time(tmp_path):
    """The liveset rule keeps the domains: the keeper asks at the deadline
    itself, the guard renews the lease, and the device is opened and petted
    again before the kernel would fire, cycle after cycle."""
    async def body():
        rig = Rig(tmp_path, peers_answer=(2, 0), answer_takes=0.05)
        rig.configure(SHORT)
        await rig.hv.start("vm1", GIB, 1, False)
        await rig.run_for(1)
        rig.connected = False  # every master gone
        await rig.run_for(20)
        assert not rig.guard.fenced and rig.asked >= 15 and rig.fired() == []
        assert len(rig.done(RELEASED)) >= 15 and len(await rig.hv.list_domains()) == 1
        assert rig.kernel.running
    run(body)


def test_after_a_hold_the_rejoin_window_is_petted_then_the_host_resets(tmp_path):
    """The master tier is back and the peers reconnected first: a slave that
    was holding gets the rejoin window, petted through; not acknowledged by
    its end, it fences and the host resets by the window's end + GRACE."""
    async def body():
        rig = Rig(tmp_path, peers_answer=(2, 0), answer_takes=0.02)
        rig.configure(SHORT)
        await rig.run_for(1)
        rig.connected = False
        await rig.run_for(3)  # held
        assert rig.guard.lease.held and not rig.guard.fenced
        rig.peers_answer = (2, 2)  # the others hear the leader again
        await rig.run_for(1.5)
        window_end = rig.guard.rejoin_by
        assert window_end is not None and rig.fired() == [] and not rig.guard.fenced
        await rig.run_for(REJOIN_WINDOW)
        assert rig.guard.fenced and rig.fired()[0] <= window_end + GRACE
    run(body)


def test_a_slave_rejoining_within_the_window_is_never_reset(tmp_path):
    async def body():
        rig = Rig(tmp_path, peers_answer=(2, 0), answer_takes=0.02)
        rig.configure(SHORT)
        await rig.run_for(1)
        rig.connected = False
        await rig.run_for(3)
        rig.peers_answer = (2, 2)
        await rig.run_for(1.5)
        assert rig.guard.rejoin_by is not None
        rig.connected = True  # acknowledged inside the window
        await rig.run_for(3)
        assert not rig.guard.fenced and rig.fired() == [] and rig.dog.armed
    run(body)


def test_master_tier_down_but_peers_too_slow_resets_the_host(tmp_path):
    """A liveset answer later than GRACE cannot be waited for: the host resets
    (the safe side). The limit of a whole-second watchdog on a 1 s term."""
    async def body():
        rig = Rig(tmp_path, peers_answer=(2, 0), answer_takes=0.5)  # a peer times out
        rig.configure(SHORT)
        await rig.run_for(1)
        rig.connected = False
        await rig.run_for(3)
        assert not rig.guard.fenced and rig.fired()
    run(body)


def test_disabling_ha_disarms_with_the_magic_close(tmp_path):
    async def body():
        rig = Rig(tmp_path)
        rig.configure(SHORT)
        await rig.run_for(1)
        rig.configure(HaConfig(enabled=False))
        assert not rig.dog.armed and not rig.kernel.running
        assert rig.device.read_bytes().endswith(MAGIC_CLOSE)
        await rig.run_for(1)
        assert rig.done(ARMED, PETTED, since=rig.now - 1) == []
        rig.configure(SHORT)  # re-armed: a new open of the device
        again = rig.now
        await rig.run_for(0.5)
        assert rig.dog.armed and rig.done(ARMED, since=again) and rig.fired() == []
    run(body)


def test_disabling_ha_after_a_release_opens_the_device_to_stop_it(tmp_path):
    async def body():
        rig = Rig(tmp_path)
        rig.configure(LONELY)
        await rig.run_for(1)
        rig.connected = False
        await rig.run_for(0.5)  # released: running, not held
        assert not rig.dog.armed and rig.kernel.running
        rig.configure(HaConfig(enabled=False))
        assert not rig.kernel.running and rig.device.read_bytes().endswith(MAGIC_CLOSE)
        await rig.run_for(5)
        assert rig.fired() == []
    run(body)


def test_stopping_disarms_only_without_domains(tmp_path):
    async def body():
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        rig = Rig(tmp_path / "a")
        rig.configure(SHORT)
        await rig.run_for(1)
        rig.keeper.stop(domains_left=True)  # the host must reset: its VMs outlive us
        assert not rig.dog.armed and rig.kernel.running
        assert MAGIC_CLOSE not in rig.device.read_bytes()
        other = Rig(tmp_path / "b")
        other.configure(SHORT)
        await other.run_for(1)
        other.keeper.stop(domains_left=False)
        assert not other.kernel.running and other.device.read_bytes().endswith(MAGIC_CLOSE)
    run(body)


def test_a_term_too_short_is_not_armed_and_says_so(tmp_path, caplog):
    async def body():
        rig = Rig(tmp_path)
        rig.configure(HaConfig(enabled=True, fence_after=3.5, detect_bound=1.5))  # 0.5 s
        with caplog.at_level(logging.ERROR):
            await rig.run_for(2)
        assert not rig.dog.armed and rig.device.read_bytes() == b""
        assert sum("NOT armed" in r.message for r in caplog.records) == 1
    run(body)


def test_a_device_that_cannot_be_opened_is_reported_once_and_never_blocks(tmp_path, caplog):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        HostWatchdog(str(fifo)).arm(1)  # a FIFO without a reader: ENXIO, not a hang

    async def body():
        rig = Rig(tmp_path)
        rig.dog.device = str(fifo)
        rig.configure(SHORT)
        with caplog.at_level(logging.ERROR):
            await rig.run_for(1)
        assert not rig.dog.armed and rig.fired() == []
        assert sum("cannot open it" in r.message for r in caplog.records) == 1
    run(body)


def test_real_devices_are_refused_under_tests(monkeypatch):
    monkeypatch.setenv(STAND_IN_ONLY, "1")  # tests/conftest.py sets it for every test
    with pytest.raises(WatchdogRefused):
        check_device("/dev/null")  # a character device, as a real watchdog
    with pytest.raises(WatchdogRefused):
        HostWatchdog("/dev/null").arm(1)
    with pytest.raises(WatchdogRefused, match="modprobe softdog"):
        check_device("/nonexistent/watchdog")


def test_off_by_default_and_warns_for_libvirt(caplog):
    assert SlaveSettings().watchdog_device == ""
    assert isinstance(keeper_for(SlaveSettings(), guard=None), NoWatchdog)
    with caplog.at_level(logging.WARNING):
        keeper_for(SlaveSettings(), None).set_ha_enabled(True)
        assert not caplog.records  # simulated domains die with the slave
        libvirt = keeper_for(SlaveSettings(backend="libvirt"), None)
        libvirt.set_ha_enabled(True)
        libvirt.set_ha_enabled(True)
    assert sum("WITHOUT A HOST WATCHDOG" in r.message for r in caplog.records) == 1


def test_nothing_the_project_runs_names_the_real_device():
    """Tests, benchmarks and scripts never pass this machine's real watchdog."""
    real = "/dev/" + "watchdog"
    root = Path(__file__).resolve().parents[2]
    found = [str(p.relative_to(root)) for d in ("tests", "benchmarks", "scripts")
             for p in (root / d).rglob("*") if p.is_file() and p.suffix in ("", ".py", ".sh")
             and real in p.read_text(errors="ignore")]
    assert found == []


def test_a_device_that_rounds_the_timeout_up_is_not_used(tmp_path, caplog):
    class Coarse(ModelledWatchdog):
        def _set_timeout(self, timeout: int) -> int:
            return super()._set_timeout(timeout + 9)  # as a driver with 10 s steps

    async def body():
        rig = Rig(tmp_path)
        rig.dog = Coarse(str(rig.device), lambda: rig.now)
        rig.keeper = WatchdogKeeper(rig.dog, GuardLease(rig.guard), clock=lambda: rig.now)
        rig.configure(SHORT)
        with caplog.at_level(logging.ERROR):
            await rig.run_for(2)
        assert not rig.dog.armed and not rig.kernel.running and not rig.keeper.running
        assert rig.device.read_bytes().count(MAGIC_CLOSE) == 1  # armed once, stopped at once
        assert sum("cannot take a 1s timeout" in r.message for r in caplog.records) == 1
    run(body)
