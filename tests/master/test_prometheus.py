"""The master's metrics, from fake sources and a real Liveness on a fake
clock: no network, no sleeping."""

from __future__ import annotations

import asyncio
import threading
import uuid as uuid_module
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from xcp_control.master import liveness as lv
from xcp_control.master.forwarding import Forwarder
from xcp_control.master.liveness import Liveness
from tests.master.world import sources
from xcp_control.master.prometheus import MasterMetrics, ha_families, pool_families
from xcp_control.master.sqlite_store import SqliteStore
from xcp_control.master.store import Put
from xcp_control.observability.endpoint import OnLoop, Sources
from xcp.v1 import datamodel_pb2 as dm, slave_service_pb2 as sl

A, B, C, D = "host-a", "host-b", "host-c", "host-d"


class Families:
    """A collector over a fixed read, so a registry can be asked for samples."""

    def __init__(self, read):
        self._read = read

    def collect(self):
        return self._read()


def registry_of(read) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(Families(read))
    return registry


def flips(registry, to, cause):
    return registry.get_sample_value("xcp_host_flips_total", {"to": to, "cause": cause})


def test_every_flip_is_counted_by_direction_and_cause():
    liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=0.0)
    registry = registry_of(lambda: pool_families(sources(liveness)))
    assert flips(registry, "not_live", "stream_ended") == 0  # exported from zero
    streams = {h: liveness.attach(h) for h in (A, B, C, D)}
    for host in (A, B, C, D):
        liveness.beat(host, 1.0)
    liveness.detach(A, streams[A], lv.STREAM_ENDED)
    liveness.detach(B, streams[B], lv.GOODBYE)
    liveness.mark_down(C)  # DeclareDead
    liveness.reap(10.0)  # D was silent
    liveness.beat(A, 11.0)  # A is back
    assert flips(registry, "live", "beat") == 5
    for cause in ("stream_ended", "goodbye", "declared_dead", "reaper"):
        assert flips(registry, "not_live", cause) == 1, cause


def test_a_superseded_stream_ending_flips_nothing():
    liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=0.0)
    old = liveness.attach(A)
    liveness.attach(A)
    liveness.beat(A, 1.0)
    liveness.detach(A, old)
    registry = registry_of(lambda: pool_families(sources(liveness)))
    assert flips(registry, "not_live", "stream_ended") == 0


def test_hosts_by_liveness_and_open_streams():
    liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=0.0)
    for host in (A, B, C):
        liveness.attach(host)
        liveness.beat(host, 1.0)
    registry = registry_of(lambda: pool_families(sources(liveness, hosts=5)))
    assert registry.get_sample_value("xcp_hosts", {"live": "true"}) == 3
    assert registry.get_sample_value("xcp_hosts", {"live": "false"}) == 2
    assert registry.get_sample_value("xcp_heartbeat_streams") == 3


def test_counts_and_gauges_come_from_the_sources():
    liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=0.0)
    registry = registry_of(lambda: pool_families(sources(
        liveness, reports=1234, sheds=7, lag=0.25, depths=(3, 0, 9), lost=2, in_flight=4)))
    value = registry.get_sample_value
    assert value("xcp_heartbeat_reports_total") == 1234
    assert value("xcp_heartbeat_sheds_total") == 7
    assert value("xcp_event_loop_lag_seconds") == 0.25
    assert value("xcp_watchers") == 3
    assert value("xcp_watch_queue_depth") == 12
    assert value("xcp_watch_queue_depth_max") == 9
    assert value("xcp_watch_events_lost_total") == 2
    assert value("xcp_forwarded_calls_in_flight") == 4


def test_forwarded_calls_land_in_the_histogram_by_method_and_reason():
    metrics = MasterMetrics()
    metrics.observe_forwarded("StartDomain", "OK", 0.2)
    metrics.observe_forwarded("StartDomain", "CANNOT_CONTACT_HOST", 2.0)
    metrics.observe_forwarded("StartDomain", "CANNOT_CONTACT_HOST", 1.9)
    value = metrics.registry.get_sample_value
    assert value("xcp_forwarded_call_seconds_count",
                 {"method": "StartDomain", "reason": "CANNOT_CONTACT_HOST"}) == 2
    assert value("xcp_forwarded_call_seconds_bucket",
                 {"method": "StartDomain", "reason": "OK", "le": "0.25"}) == 1
    assert value("xcp_forwarded_call_seconds_sum",
                 {"method": "StartDomain", "reason": "OK"}) == pytest.approx(0.2)


def test_the_forwarder_reports_a_host_offline_call_with_its_reason():
    now = [100.0]
    liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=0.0)  # HOST never beat
    host = str(uuid_module.uuid4())
    store = SimpleNamespace(get=lambda c, u: dm.Host(uuid=host, address="127.0.0.1:1"))
    forwarder = Forwarder(store, liveness, contact_timeout=2.0, clock=lambda: now[0])
    seen = []
    forwarder.add_call_listener(lambda *call: seen.append(call))

    async def call():
        return await forwarder.call(host, "StartDomain", sl.StartDomainRequest(),
                                    operation="start", timeout=30.0, budget=None)
    with pytest.raises(Exception) as caught:
        asyncio.run(call())
    assert caught.value.reason == "HOST_OFFLINE"
    assert seen == [("StartDomain", "HOST_OFFLINE", 0.0)]


def test_store_commits_report_their_duration_and_size(tmp_path):
    metrics = MasterMetrics()

    async def main():
        store = await SqliteStore(str(tmp_path / "pool.db")).open()
        store.add_commit_observer(metrics.observe_commit)
        try:
            await store.commit([Put(dm.VM(uuid=str(uuid_module.uuid4()), name_label="v"))
                                for _ in range(3)])
        finally:
            await store.close()
    asyncio.run(main())
    value = metrics.registry.get_sample_value
    assert value("xcp_store_commit_seconds_count") == 1
    assert value("xcp_store_commit_changes_sum") == 3


def test_the_extension_point_adds_families_to_the_scrape():
    async def main():
        metrics = MasterMetrics()
        from prometheus_client.core import GaugeMetricFamily
        metrics.add_source(lambda: [GaugeMetricFamily("xcp_ha_leader", "leader", value=1)])
        metrics.serve("127.0.0.1:0")
        try:
            # The HTTP thread collects; the read runs here, on the loop.
            text = await asyncio.to_thread(generate_latest, metrics.registry)
        finally:
            await metrics.stop()
        return text.decode()
    assert "xcp_ha_leader 1.0" in asyncio.run(main())


# -- OnLoop: reads run on the loop that owns the state --------------------------------


@pytest.fixture
def loop_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_on_loop_reads_on_the_loop_thread(loop_thread):
    threads = []

    def read():
        threads.append(threading.current_thread())
        return pool_families(sources(Liveness(3.0, 0.0, 0.0), hosts=2))
    registry = CollectorRegistry()
    registry.register(OnLoop(loop_thread, read))
    assert registry.get_sample_value("xcp_hosts", {"live": "false"}) == 2
    assert threads and threads[0] is not threading.current_thread()


def test_on_loop_gives_up_on_a_loop_that_does_not_answer(loop_thread):
    gate = threading.Event()
    loop_thread.call_soon_threadsafe(gate.wait, 5)  # the loop is stuck until released
    try:
        collector = OnLoop(loop_thread, lambda: [], timeout=0.05)
        assert list(collector.collect()) == []
    finally:
        gate.set()


def test_on_loop_of_a_closed_loop_collects_nothing():
    loop = asyncio.new_event_loop()
    loop.close()
    assert list(OnLoop(loop, lambda: [1]).collect()) == []


def test_sources_take_sync_and_async_reads():
    got = Sources()
    got.add(lambda: ["a"])

    async def later():
        return ["b"]
    got.add(later)
    assert asyncio.run(got.read()) == ["a", "b"]


def test_the_event_hub_counts_queue_depths_and_events_lost(tmp_path):
    from xcp_control.master.events import EventHub

    async def main():
        store = await SqliteStore(str(tmp_path / "pool.db")).open()
        hub = EventHub(store, queue_size=2)
        store.add_listener(hub.publish)
        try:
            watch = hub.watch([], "")
            await anext(watch)  # the Sync of an empty snapshot: now subscribed
            await store.put(dm.VM(uuid=str(uuid_module.uuid4()), name_label="v"))
            depths = hub.queue_depths()
            for _ in range(3):  # more than the queue holds: cut off
                await store.put(dm.VM(uuid=str(uuid_module.uuid4()), name_label="v"))
            with pytest.raises(Exception):
                await anext(watch)
            return depths, hub.events_lost
        finally:
            await store.close()
    assert asyncio.run(asyncio.wait_for(main(), 30)) == ([1], 1)


class FakeTerm:
    def __init__(self, acting: bool, epoch: int, won: int) -> None:
        self._acting, self.epoch, self.elections_won = acting, epoch, won

    def acting(self, now: float) -> bool:
        return self._acting


def test_ha_families_say_who_leads_at_which_epoch():
    def values(term):
        return {f.name: f.samples[0].value for f in ha_families(term, now=0.0)}
    assert values(FakeTerm(True, 7, 2)) == {"xcp_leader": 1, "xcp_epoch": 7,
                                            "xcp_elections_won": 2}
    assert values(FakeTerm(False, 9, 0))["xcp_leader"] == 0


def test_etcd_requests_are_timed_by_kind_and_outcome():
    metrics = MasterMetrics()
    metrics.observe_etcd("txn", 0.002, True)
    metrics.observe_etcd("txn", 0.5, False)
    registry = metrics.registry
    assert registry.get_sample_value("xcp_etcd_request_seconds_count",
                                     {"kind": "txn", "outcome": "ok"}) == 1
    assert registry.get_sample_value("xcp_etcd_request_seconds_count",
                                     {"kind": "txn", "outcome": "error"}) == 1
