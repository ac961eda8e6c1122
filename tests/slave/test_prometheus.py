"""A slave's scrape-time metrics, from a simulated hypervisor (no sleeping:
operation times are zero)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from xcp_control.slave.hypervisor import SimulatedHypervisor
from xcp_control.slave.prometheus import fence_families, slave_families, watchdog_families

VMS = [f"1b5e7c8e-1111-4222-8333-44445555666{i}" for i in range(3)]


class Fixed:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def sample(families, name, labels=None):
    registry = CollectorRegistry()
    registry.register(Fixed(families))
    return registry.get_sample_value(name, labels or {})


def test_domains_by_state_memory_and_heartbeat():
    async def main():
        hv = SimulatedHypervisor("host", 4 << 30)
        for vm in VMS:
            await hv.start(vm, 1 << 30, 1, False)
        await hv.pause(VMS[0])
        beating = SimpleNamespace(connected=True, sessions=2)
        return await slave_families(hv, beating)
    families = asyncio.run(main())
    assert sample(families, "xcp_slave_domains", {"state": "RUNNING"}) == 2
    assert sample(families, "xcp_slave_domains", {"state": "PAUSED"}) == 1
    assert sample(families, "xcp_slave_domains", {"state": "SUSPENDED"}) == 0
    assert sample(families, "xcp_slave_memory_bytes", {"kind": "free"}) == 1 << 30
    assert sample(families, "xcp_slave_master_connected") == 1
    assert sample(families, "xcp_slave_heartbeat_sessions_total") == 2


def test_before_the_heartbeat_client_exists_only_the_host_is_reported():
    families = asyncio.run(slave_families(SimulatedHypervisor("host", 1 << 30), None))
    assert sample(families, "xcp_slave_enabled") == 1
    assert sample(families, "xcp_slave_master_connected") is None


def test_fences_are_counted_and_the_fenced_state_shown():
    values = {f.name: f.samples[0].value
              for f in fence_families(SimpleNamespace(fences=2, fenced=True))}
    assert values == {"xcp_slave_fences": 2, "xcp_slave_fenced": 1}
    calm = {f.name: f.samples[0].value
            for f in fence_families(SimpleNamespace(fences=0, fenced=False))}
    assert calm == {"xcp_slave_fences": 0, "xcp_slave_fenced": 0}


def test_the_watchdog_shows_whether_it_runs():
    values = {f.name: f.samples[0].value for f in watchdog_families(
        SimpleNamespace(running=True, timeout=1, pets=7))}
    assert values == {"xcp_slave_watchdog_armed": 1, "xcp_slave_watchdog_timeout_seconds": 1,
                      "xcp_slave_watchdog_pets": 7}
    off = {f.name: f.samples[0].value for f in watchdog_families(
        SimpleNamespace(running=False, timeout=None, pets=0))}
    assert off["xcp_slave_watchdog_armed"] == 0 and off["xcp_slave_watchdog_timeout_seconds"] == 0
