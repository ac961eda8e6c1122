"""The world the master's unit tests run in: a real SQLite store, Liveness on a fixed
clock, the metrics mirror and the Pool, with helpers to add hosts and VMs. Shared by
test_pool, test_sessions, test_lifecycle and test_listing (a helper module, not a test
module: tests import it, never each other)."""

from __future__ import annotations

import asyncio
import uuid as uuid_module
from dataclasses import dataclass
from types import SimpleNamespace

from xcp_control.master.prometheus import PoolSources
from xcp_control.master.listing import HostListing
from xcp_control.master.liveness import Liveness
from xcp_control.master.locks import OperationLocks
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.pool import Pool
from xcp_control.master.store import Put
from xcp_control.master.sqlite_store import SqliteStore
from xcp.v1 import datamodel_pb2 as dm

NOW = 1000.0  # the fixed monotonic reading every Liveness call uses
GIB = 1 << 30


def new_uuid() -> str:
    return str(uuid_module.uuid4())


@dataclass
class World:
    store: SqliteStore
    liveness: Liveness
    pool: Pool
    locks: OperationLocks

    async def add_host(self, name: str, live: bool = True) -> dm.Host:
        host = dm.Host(uuid=new_uuid(), name_label=name, address="127.0.0.1:1",
                       enabled=True, metrics=new_uuid())
        metrics = dm.HostMetrics(uuid=host.metrics, host=host.uuid, live=live,
                                 memory_total=64 * GIB, memory_free=64 * GIB)
        await self.store.commit([Put(host), Put(metrics)])
        if live:
            self.liveness.beat(host.uuid, NOW)
        return host

    async def add_vm(self, name: str, state: int = dm.HALTED, on: str = "") -> dm.VM:
        vm = dm.VM(uuid=new_uuid(), name_label=name, power_state=state, resident_on=on,
                   memory=GIB, vcpus=1)
        await self.store.put(vm)
        return vm


def listed(world: World) -> list[tuple[dm.Host, dm.HostMetrics]]:
    """What ListHosts answers now."""
    answer = HostListing(world.store, world.liveness, world.pool.mirror, lambda: NOW).response()
    return list(zip(answer.hosts, answer.host_metrics))


def run(body, tmp_path):
    async def main():
        store = await SqliteStore(str(tmp_path / "pool.db")).open()
        liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=NOW)
        mirror = MetricsMirror(store, liveness, clock=lambda: NOW, write_interval=30.0)
        liveness.add_listener(mirror.on_flip)
        locks = OperationLocks()
        world = World(store, liveness, Pool(store, liveness, mirror, locks), locks)
        try:
            return await asyncio.wait_for(body(world), 60)
        finally:
            await store.close()
    return asyncio.run(main())


def wired(listing: HostListing, w: World) -> HostListing:
    """Registered as the master registers it (master/server.py, Master._wire)."""
    w.store.add_listener(listing.on_changes)
    w.liveness.add_listener(listing.on_flip)
    w.pool.mirror.add_report_listener(listing.on_report)
    return listing


def sources(liveness, hosts=4, reports=0, sheds=0, lag=0.0, depths=(), lost=0, in_flight=0):
    """What the master's metrics read at scrape time, as fakes around `liveness`."""
    return PoolSources(
        liveness=liveness,
        sessions=SimpleNamespace(reports=reports, sheds=sheds),
        loop_lag=SimpleNamespace(lag=lag, limit=0.5),
        hub=SimpleNamespace(watchers=len(depths), queue_depths=lambda: list(depths),
                            events_lost=lost),
        forwarder=SimpleNamespace(in_flight_total=in_flight),
        host_count=lambda: hosts)
