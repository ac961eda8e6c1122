"""The ListHosts answer, kept up to date rather than rebuilt for every call.

Building the answer for 10,000 hosts (sort, copy, overlay the in-memory
liveness and last beat of each) costs about 100 ms of the event loop in
Python, time taken from heartbeats. Instead the answer is rebuilt only when a
Host or HostMetrics object changes in the store; a live flip updates one
entry; and the last-beat times (and memory figures) are refreshed at most once
per `refresh_every` seconds, so ListHosts reports a heartbeat's age with that
resolution (GetHostMetrics stays exact).
"""

from __future__ import annotations

from typing import Callable

from xcp_control.master.liveness import Liveness
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.store import Change, Store
from xcp.v1 import datamodel_pb2 as dm, host_service_pb2 as hs

HOST_CLASSES = ("host", "host_metrics")


class HostListing:
    """Maintains one ListHostsResponse; `response()` brings it up to date."""

    def __init__(self, store: Store, liveness: Liveness, mirror: MetricsMirror,
                 clock: Callable[[], float], refresh_every: float = 1.0) -> None:
        self._store = store
        self._liveness = liveness
        self._mirror = mirror
        self._clock = clock
        self._refresh_every = refresh_every
        self._response = hs.ListHostsResponse()
        self._position: dict[str, int] = {}  # host uuid -> index in the response
        self._stale = True
        self._flipped: set[str] = set()
        self._refreshed_at = float("-inf")

    def response(self) -> hs.ListHostsResponse:
        """Every host, ordered by name_label then uuid, with its metrics.
        The message is shared: serialize it, never change it."""
        now = self._clock()
        if self._stale:
            self._rebuild()
            self._refreshed_at = now
        elif now - self._refreshed_at >= self._refresh_every:
            self._refresh_all()
            self._refreshed_at = now
        else:
            self._refresh(self._flipped)
        self._flipped.clear()
        return self._response

    def on_changes(self, changes: list[Change]) -> None:
        if any(c.class_name in HOST_CLASSES for c in changes):
            self._stale = True

    def on_flip(self, host: str, live: bool) -> None:
        self._flipped.add(host)

    def _rebuild(self) -> None:
        hosts = sorted(self._store.list("host"), key=lambda h: (h.name_label, h.uuid))
        response = hs.ListHostsResponse()
        response.hosts.extend(hosts)
        for host in hosts:
            stored = self._store.get("host_metrics", host.metrics)
            entry = response.host_metrics.add()
            entry.CopyFrom(stored or dm.HostMetrics(uuid=host.metrics, host=host.uuid))
            self._mirror.overlay(entry)
        self._response = response
        self._position = {h.uuid: i for i, h in enumerate(hosts)}
        self._stale = False

    def _refresh_all(self) -> None:
        for entry in self._response.host_metrics:
            self._mirror.overlay(entry)

    def _refresh(self, hosts: set[str]) -> None:
        for host in hosts:
            position = self._position.get(host)
            if position is not None:
                self._mirror.overlay(self._response.host_metrics[position])
