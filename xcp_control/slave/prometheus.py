"""A slave's Prometheus metrics: its domains by state, its memory, whether
its heartbeat stream to the master is up, and the latency of the domain
operations the master forwards to it (rpc/call_metrics.py:
`xcp_slave_calls_total`, `xcp_slave_call_seconds{method="StartDomain"}`).

Domains and memory are read from the hypervisor at scrape time, on the event
loop (endpoint.OnLoop), so an operation costs nothing extra for metrics.
Extension point (self-fencing, HA): `SlaveMetrics.add_source(read)` with a
function returning metric families, read on the loop at each scrape.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from xcp_control.model import state_name
from xcp_control.observability.endpoint import MetricsEndpoint, OnLoop, Read, Sources
from xcp_control.rpc.call_metrics import CallMetrics
from xcp_control.slave.hypervisor import Hypervisor
from xcp.v1 import datamodel_pb2 as dm

# Exported from zero, so a state's first domain shows as a change.
DOMAIN_STATES = (dm.RUNNING, dm.PAUSED, dm.SUSPENDED)
SLAVE_SERVICE_PREFIX = "/xcp.v1.SlaveService/"


class _Heartbeat(Protocol):
    connected: bool
    sessions: int


async def slave_families(hypervisor: Hypervisor, heartbeat: _Heartbeat | None) -> list[Metric]:
    """The scrape-time metrics of one slave."""
    by_state = Counter(d.state for d in await hypervisor.list_domains())
    domains = GaugeMetricFamily("xcp_slave_domains", "Domains on this host by power state",
                                labels=["state"])
    for state in sorted({*DOMAIN_STATES, *by_state}):
        domains.add_metric([state_name(state)], by_state.get(state, 0))
    memory = GaugeMetricFamily("xcp_slave_memory_bytes", "Memory for domains on this host",
                               labels=["kind"])
    memory.add_metric(["total"], hypervisor.memory_total)
    memory.add_metric(["free"], hypervisor.memory_free)
    families: list[Metric] = [
        domains, memory,
        GaugeMetricFamily("xcp_slave_enabled", "1 if the host takes new domains",
                          value=int(hypervisor.enabled))]
    if heartbeat is not None:
        families += [
            GaugeMetricFamily("xcp_slave_master_connected",
                              "1 while the heartbeat stream to the master is up",
                              value=int(heartbeat.connected)),
            CounterMetricFamily("xcp_slave_heartbeat_sessions",
                                "Heartbeat streams the master welcomed",
                                value=heartbeat.sessions)]
    return families


class SlaveMetrics:
    """The slave's registry; `serve(listen)` opens the endpoint."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.calls = CallMetrics("xcp_slave", "domain operations and other SlaveService calls",
                                 self.registry, prefix=SLAVE_SERVICE_PREFIX)
        self.hypervisor = hypervisor
        self.heartbeat: _Heartbeat | None = None  # set once the client exists
        self._sources = Sources()
        self._sources.add(lambda: slave_families(self.hypervisor, self.heartbeat))
        self.endpoint = MetricsEndpoint(self.registry)

    def add_source(self, read: Read) -> None:
        """Read these families on the event loop at every scrape (fences, HA)."""
        self._sources.add(read)

    def serve(self, listen: str) -> str:
        """Bind `listen` and serve; the bound HOST:PORT. Called on the loop."""
        self.registry.register(OnLoop(asyncio.get_running_loop(), self._sources.read))
        return self.endpoint.start(listen)

    async def stop(self) -> None:
        await self.endpoint.stop()


def fence_families(guard) -> list:
    """HA self-fencing (slave/ha_guard.py): fences so far, and whether the host
    is fenced now (its domain operations refused until the leader acknowledges it)."""
    fences = CounterMetricFamily("xcp_slave_fences", "Times this host fenced itself (HA)",
                                 value=guard.fences)
    fenced = GaugeMetricFamily("xcp_slave_fenced", "1 while this host is fenced (HA), else 0",
                               value=1 if guard.fenced else 0)
    return [fences, fenced]


def watchdog_families(keeper) -> list:
    """The host watchdog (slave/watchdog.py, with --watchdog-device): whether it
    runs (armed by this slave: the host resets if petting stops), its timeout,
    and the pets so far."""
    armed = GaugeMetricFamily("xcp_slave_watchdog_armed", "1 while the host watchdog runs "
                              "(HA): the host resets when petting stops, else 0",
                              value=1 if keeper.running else 0)
    timeout = GaugeMetricFamily("xcp_slave_watchdog_timeout_seconds", "The host watchdog's "
                                "timeout (0 while it cannot be armed)",
                                value=keeper.timeout or 0)
    pets = CounterMetricFamily("xcp_slave_watchdog_pets", "Times the host watchdog was petted",
                               value=keeper.pets)
    return [armed, timeout, pets]
