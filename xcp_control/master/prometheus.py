"""The master's Prometheus metrics (DESIGN.md, "Names added with metrics").

Two kinds, so that hot paths stay lean:
- state the master already keeps (live hosts, open heartbeat streams, counts
  of reports and sheds, loop lag, watchers and their queues) is read at scrape
  time by `pool_families`, on the event loop (endpoint.OnLoop): nothing is
  updated per beat for metrics beyond a plain integer;
- things with a duration (forwarded calls, API calls, store commits) go into
  prometheus_client histograms as they end: per call, never per beat.

Extension point for what other parts add (HA: leader, epoch, elections, etcd
request latency): `MasterMetrics.add_source(read)` with a function returning
metric families, read on the loop at each scrape; or register histograms on
`MasterMetrics.registry` and observe them where the event ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Protocol

from prometheus_client import (CollectorRegistry, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from xcp_control.master import liveness as lv
from xcp_control.observability.endpoint import MetricsEndpoint, OnLoop, Read, Sources
from xcp_control.rpc.call_metrics import CallMetrics

# Forwarded calls: HOST_OFFLINE answers in microseconds, CANNOT_CONTACT_HOST
# near contact_timeout (2 s), operations up to their timeouts (60 s).
FORWARD_BUCKETS = (.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 2.5,
                   5, 10, 30, 60)
COMMIT_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# Every (to, cause) pair a flip can have, exported from zero so that rate()
# and increase() see the first flip.
FLIP_KINDS = ((True, lv.BEAT), (False, lv.STREAM_ENDED), (False, lv.REAPER),
              (False, lv.GOODBYE), (False, lv.DECLARED_DEAD))


class _Liveness(Protocol):
    live_count: int
    open_streams: int
    flips: dict[tuple[bool, str], int]


@dataclass
class PoolSources:
    """What `pool_families` reads; the master's own objects, or fakes in tests."""

    liveness: _Liveness  # live_count, open_streams, flips
    sessions: object  # reports, sheds (HeartbeatSessions)
    loop_lag: object  # lag, limit (admission.LoopLag)
    hub: object  # watchers, queue_depths(), events_lost (EventHub)
    forwarder: object  # in_flight_total (Forwarder)
    host_count: Callable[[], int]  # hosts in the pool database


def pool_families(s: PoolSources) -> list[Metric]:
    """The scrape-time metrics of one master."""
    live = s.liveness.live_count
    hosts = GaugeMetricFamily("xcp_hosts", "Hosts in the pool by liveness", labels=["live"])
    hosts.add_metric(["true"], live)
    hosts.add_metric(["false"], max(0, s.host_count() - live))
    flips = CounterMetricFamily("xcp_host_flips", "Host liveness flips by direction and cause",
                                labels=["to", "cause"])
    for live, cause in FLIP_KINDS:
        flips.add_metric(["live" if live else "not_live", cause],
                         s.liveness.flips.get((live, cause), 0))
    depths = s.hub.queue_depths()
    return [
        hosts, flips,
        _gauge("xcp_heartbeat_streams", "Heartbeat streams open", s.liveness.open_streams),
        _counter("xcp_heartbeat_reports", "Hellos and beats received", s.sessions.reports),
        _counter("xcp_heartbeat_sheds", "New heartbeat streams refused TOO_BUSY",
                 s.sessions.sheds),
        _gauge("xcp_event_loop_lag_seconds", "Event-loop lag, smoothed over a few probes",
               s.loop_lag.lag),
        _gauge("xcp_event_loop_shed_lag_seconds",
               "Lag above which new heartbeat streams are refused (0 = never)", s.loop_lag.limit),
        _gauge("xcp_forwarded_calls_in_flight", "Forwarded calls waiting on slaves",
               s.forwarder.in_flight_total),
        _gauge("xcp_watchers", "Open Watch streams", s.hub.watchers),
        _gauge("xcp_watch_queue_depth", "Changes queued for watchers, summed", sum(depths)),
        _gauge("xcp_watch_queue_depth_max", "Changes queued for the slowest watcher",
               max(depths, default=0)),
        _counter("xcp_watch_events_lost", "Watchers answered EVENTS_LOST", s.hub.events_lost),
    ]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class MasterMetrics:
    """The master's registry: histograms fed as events end, plus sources read
    at scrape time; `serve(listen)` opens the endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.forwarded = Histogram(
            "xcp_forwarded_call_seconds",
            "Forwarded calls to slaves by method and outcome (OK or the catalogued reason)",
            ["method", "reason"], buckets=FORWARD_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram("xcp_store_commit_seconds",
                                        "Duration of one store transaction (group commit)",
                                        buckets=COMMIT_BUCKETS, registry=self.registry)
        self.commit_changes = Histogram("xcp_store_commit_changes",
                                        "Changes written by one store transaction",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.api = CallMetrics("xcp_api", "API calls", self.registry)
        self._sources = Sources()
        self.endpoint = MetricsEndpoint(self.registry)

    def observe_forwarded(self, method: str, reason: str, seconds: float) -> None:
        self.forwarded.labels(method, reason).observe(seconds)

    def observe_commit(self, seconds: float, changes: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_changes.observe(changes)

    def add_source(self, read: Read) -> None:
        """Read these families on the event loop at every scrape (the extension
        point: HA adds leader, epoch and elections here)."""
        self._sources.add(read)

    def serve(self, listen: str) -> str:
        """Register the scrape-time sources and bind `listen`; the bound HOST:PORT.
        Called on the event loop the sources belong to."""
        self.registry.register(OnLoop(asyncio.get_running_loop(), self._sources.read))
        return self.endpoint.start(listen)

    async def stop(self) -> None:
        await self.endpoint.stop()
