"""The ListHosts answer, kept up to date rather than rebuilt for every call.

Building the answer for 10,000 hosts (sort, copy, overlay the in-memory
liveness and last report of each) costs about half a second of the event loop
in Python, time taken from everything else. Instead the answer is rebuilt only
when the set of hosts or their order changes (a host added, removed or
renamed); a changed Host or HostMetrics object replaces its one entry; a live
flip updates its entry at once; and the entries of hosts that reported are
refreshed at most once per `refresh_every` seconds, so ListHosts reports a
report's age with that resolution (GetHostMetrics stays exact).

A rebuild (about 40 us per host: 0.4 s at 10,000) is done by the loop
`settle` seconds after the last change that needs one, so that a burst of
registrations (a pool starting, a master restart) costs one rebuild and no
client's ListHosts waits for it (BENCHMARKS.md, issue 10).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from xcp_control.master.liveness import Liveness
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.store import Change, Store
from xcp.v1 import datamodel_pb2 as dm, host_service_pb2 as hs

HOST_CLASSES = ("host", "host_metrics")
# HA's bookkeeping on Host records (ha_config.py): the leader's, left out of the
# answer (32 uuids each would make a 10,000-host answer several times larger).
HA_BOOKKEEPING = ("ha_witnesses", "ha_witness_version", "ha_witnesses_pending",
                  "ha_witness_pending_version", "ha_armed_generation")


def _public(entry: dm.Host) -> None:
    for name in HA_BOOKKEEPING:
        entry.ClearField(name)


class HostListing:
    """Maintains one ListHostsResponse; `response()` brings it up to date."""

    def __init__(self, store: Store, liveness: Liveness, mirror: MetricsMirror,
                 clock: Callable[[], float], refresh_every: float = 1.0,
                 settle: float = 1.0) -> None:
        self._store = store
        self._liveness = liveness
        self._mirror = mirror
        self._clock = clock
        self._refresh_every = refresh_every
        self._response = hs.ListHostsResponse()
        self._position: dict[str, int] = {}  # host uuid -> index in the response
        self._stale = True
        self._flipped: set[str] = set()  # shown at once
        self._reported: set[str] = set()  # shown within refresh_every
        self._replaced: dict[str, Change] = {}  # host -> its newest stored change
        self._refreshed_at = float("-inf")
        self._settle = settle
        self._warm: asyncio.TimerHandle | None = None

    def response(self) -> hs.ListHostsResponse:
        """Every host, ordered by name_label then uuid, with its metrics.
        The message is shared: serialize it, never change it."""
        now = self._clock()
        if self._stale:
            self._rebuild()
            self._refreshed_at = now
        else:
            self._replace()
            if now - self._refreshed_at >= self._refresh_every:
                self._flipped |= self._reported
                self._reported.clear()
                self._refreshed_at = now
            self._refresh(self._flipped)
        self._flipped.clear()
        return self._response

    def on_changes(self, changes: list[Change]) -> None:
        hosts_changed = False
        for c in changes:
            if c.class_name not in HOST_CLASSES:
                continue
            hosts_changed = True
            if self._stale:
                continue
            host = c.uuid if c.class_name == "host" else c.obj.host
            if c.op != "mod" or host not in self._position or self._reorders(c):
                self._stale = True  # the set of hosts or their order changed
                self._replaced.clear()
            else:
                self._replaced[f"{c.class_name}:{host}"] = c
        if hosts_changed and self._stale:
            self._rebuild_later()

    def _rebuild_later(self) -> None:
        """Rebuild once changes have settled, unless a call does it first."""
        if self._warm is not None:
            self._warm.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the store by hand): on demand only
            return
        self._warm = loop.call_later(self._settle, self._rebuild_if_stale)

    def _rebuild_if_stale(self) -> None:
        self._warm = None
        if self._stale:
            self.response()

    def _reorders(self, change: Change) -> bool:
        if change.class_name != "host":
            return False
        entry = self._response.hosts[self._position[change.uuid]]
        return entry.name_label != change.obj.name_label

    def on_report(self, host: str) -> None:
        """A report's figures were taken in: shown within refresh_every."""
        self._reported.add(host)

    def on_flip(self, host: str, live: bool) -> None:
        self._flipped.add(host)

    def _rebuild(self) -> None:
        hosts = sorted(self._store.list("host"), key=lambda h: (h.name_label, h.uuid))
        response = hs.ListHostsResponse()
        response.hosts.extend(hosts)
        for entry in response.hosts:
            _public(entry)
        for host in hosts:
            stored = self._store.get("host_metrics", host.metrics)
            entry = response.host_metrics.add()
            entry.CopyFrom(stored or dm.HostMetrics(uuid=host.metrics, host=host.uuid))
            self._mirror.overlay(entry)
        self._response = response
        self._position = {h.uuid: i for i, h in enumerate(hosts)}
        self._stale = False
        self._replaced.clear()
        self._reported.clear()

    def _replace(self) -> None:
        """Stored objects that changed in place take their entry's place."""
        for change in self._replaced.values():
            position = self._position[change.uuid if change.class_name == "host"
                                      else change.obj.host]
            if change.class_name == "host":
                entry = self._response.hosts[position]
                entry.CopyFrom(change.obj)
                _public(entry)
            else:
                entry = self._response.host_metrics[position]
                entry.CopyFrom(change.obj)
                self._mirror.overlay(entry)
        self._replaced.clear()

    def _refresh(self, hosts: set[str]) -> None:
        for host in hosts:
            position = self._position.get(host)
            if position is not None:
                self._mirror.overlay(self._response.host_metrics[position])
