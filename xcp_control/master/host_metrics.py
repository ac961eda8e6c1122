"""HostMetrics in the store: mirrored from liveness and heartbeats.

Liveness flips are written at once (one batch for a burst, such as a rack
losing power); memory figures at most once per `write_interval` per host;
nothing is written per heartbeat. One task does all the writing, so writes to
one host never race and a slow disk never delays a heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from xcp_control.master.liveness import Liveness
from xcp_control.master.store import Put, Store
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2

log = logging.getLogger(__name__)


@dataclass
class _Reported:
    memory_total: int
    memory_free: int
    wall: float  # wall-clock seconds of the last heartbeat
    written_at: float  # monotonic seconds of the last write of the figures


class MetricsMirror:
    """Keeps each host's HostMetrics object in step with what is known in memory."""

    def __init__(self, store: Store, liveness: Liveness, clock: Callable[[], float],
                 write_interval: float) -> None:
        self._store = store
        self._liveness = liveness
        self._clock = clock
        self._interval = write_interval
        self._reported: dict[str, _Reported] = {}
        self._dirty: set[str] = set()  # hosts to write at once
        self._stale: set[str] = set()  # hosts whose figures wait for their interval
        self._wake = asyncio.Event()
        self._report_listeners: list[Callable[[str], None]] = []

    def add_report_listener(self, listener: Callable[[str], None]) -> None:
        """Call listener(host) after each report's figures are taken in."""
        self._report_listeners.append(listener)

    def report(self, host: str, memory_free: int, wall: float,
               memory_total: int | None = None) -> None:
        """Figures from a heartbeat (memory_total only with a Hello); written
        later, at a bounded rate. This is on the per-beat path: keep it lean."""
        for listener in self._report_listeners:
            listener(host)
        seen = self._reported.get(host)
        if seen is None:
            self._reported[host] = _Reported(memory_total or 0, memory_free, wall, self._clock())
            self._mark(host)
            return
        seen.wall = wall
        total = seen.memory_total if memory_total is None else memory_total
        if seen.memory_total != total:  # a host restarted with other hardware: now
            seen.memory_total, seen.memory_free = total, memory_free
            self._mark(host)
        elif seen.memory_free != memory_free:
            seen.memory_free = memory_free
            self._stale.add(host)

    def forget(self, host: str) -> None:
        self._reported.pop(host, None)
        self._dirty.discard(host)
        self._stale.discard(host)

    def view(self, metrics: datamodel_pb2.HostMetrics) -> datamodel_pb2.HostMetrics:
        """The stored object with what memory knows newer: live and last beat."""
        out = copy(metrics)
        self.overlay(out)
        return out

    def overlay(self, metrics: datamodel_pb2.HostMetrics) -> None:
        """Write what memory knows newer than the store into `metrics`, in place."""
        metrics.live = self._liveness.is_live(metrics.host)
        seen = self._reported.get(metrics.host)
        if seen is not None:
            metrics.last_updated.FromNanoseconds(int(seen.wall * 1e9))
            metrics.memory_total, metrics.memory_free = seen.memory_total, seen.memory_free

    def on_flip(self, host: str, live: bool) -> None:
        self._mark(host)

    def _mark(self, host: str) -> None:
        self._dirty.add(host)
        self._wake.set()

    async def run(self, tick: float = 1.0) -> None:
        """Write dirty hosts as they come, and stale figures once due."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), tick)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            self._promote_due()
            if self._dirty:
                hosts, self._dirty = self._dirty, set()
                await self._write(hosts)

    def _promote_due(self) -> None:
        now = self._clock()
        due = {h for h in self._stale if now - self._reported[h].written_at >= self._interval}
        self._stale -= due
        self._dirty |= due

    async def _write(self, hosts: set[str]) -> None:
        puts = [Put(m) for h in hosts if (m := self._updated(h)) is not None]
        try:
            await self._store.commit(puts)
        except Exception:  # noqa: BLE001 - retried on the next pass
            log.exception("writing host metrics failed; will retry")
            self._dirty |= hosts
            await asyncio.sleep(0.5)

    def _updated(self, host: str) -> datamodel_pb2.HostMetrics | None:
        record = self._store.get("host", host)
        stored = record and self._store.get("host_metrics", record.metrics)
        if not stored:
            return None
        metrics = copy(stored)
        metrics.live = self._liveness.is_live(host)
        seen = self._reported.get(host)
        if seen is not None:
            metrics.memory_total, metrics.memory_free = seen.memory_total, seen.memory_free
            metrics.last_updated.CopyFrom(_timestamp(seen.wall))
            seen.written_at = self._clock()
        return metrics


def _timestamp(wall: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts
