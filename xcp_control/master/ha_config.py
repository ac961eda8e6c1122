"""What the leader tells each slave about HA, on its heartbeat stream.

The Hello answer carries the pool's HA config (enabled, the host's own
fence_after, the leader's detection bound, the other hosts' SlaveService
addresses); when HA is switched on or off or the pool's hosts change, the
config is pushed to every open stream. Nothing here runs per beat: only a
Hello, a SetHaConfig or a Host change does work.

fence_after is the slave's setting (`xcp-slave --fence-after`), sent in its
Hello and kept here per host (the restarter reads it: ha_restart.py), and in
the store (Host.fence_after_ms), so that a new leader knows the lease of a
host that has not said Hello to it yet. One
not above the leader's detection bound (dead_after) plus the slave's
transport bound (three PING intervals) is raised to that floor + 1 s: the
slave counts its lease that much earlier than the last moment it saw its
stream open, so such a host would fence while its stream is healthy. The
slave takes the value it is told.
"""

from __future__ import annotations

from typing import Callable, Iterable

import logging

from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.store import Change, Store
from xcp.v1 import liveness_service_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_FENCE_AFTER = 10.0  # seconds: a slave that sends none (DESIGN.md)
WATCHED = ("pool", "host")  # classes whose changes change what slaves are told

Push = Callable[[str, pb.HeartbeatResponse], None]


class HaAnnouncer:
    """Fills the HA config into heartbeat answers and pushes it on change."""

    def __init__(self, store: Store, pool_ha: PoolHa, detect_bound: float,
                 transport_bound: float = 0.0) -> None:
        self._store = store
        self._pool_ha = pool_ha
        self.detect_bound = detect_bound
        # The slave's own bound (its channel's keepalive time + timeout, three
        # PING intervals: rpc/options.py); its lease starts this much earlier too.
        self.transport_bound = transport_bound
        self._fence_after: dict[str, float] = {}  # host -> its fence_after (seconds)
        # Set by the wiring: push(host, message) onto an open stream, and the
        # hosts with one open (LivenessServicer.push / .open_hosts).
        self.push: Push | None = None
        self.open_hosts: Callable[[], Iterable[str]] = lambda: ()

    def fence_after(self, host: str) -> float:
        """The host's lease: as agreed at its Hello to us, else as stored from
        its Hello to an earlier leader (a failover), else the default."""
        if host in self._fence_after:
            return self._fence_after[host]
        record = self._store.get("host", host)
        if record is not None and record.fence_after_ms:
            return record.fence_after_ms / 1000
        return DEFAULT_FENCE_AFTER

    def keep(self, host: str, hello: pb.Hello) -> None:
        """A Hello: keep the host's fence_after. One not above the floor
        (dead_after + the slave's transport bound) would make a healthy host
        fence: the leader raises it to the floor + 1 s, says so in the log,
        and tells the slave the value it took (HeartbeatResponse.fence_after_ms),
        so both sides count the same lease."""
        fence_after = hello.fence_after_ms / 1000 if hello.fence_after_ms else DEFAULT_FENCE_AFTER
        # The slave's channel may be slower to notice us than our interval says
        # (its first stream is built before it hears our interval).
        floor = self.detect_bound + max(self.transport_bound, hello.transport_bound_ms / 1000)
        if fence_after <= floor:
            log.warning("host %s asks for fence_after %.1fs, not above dead_after + 3 PING "
                        "intervals (%.1fs): using %.1fs", host, fence_after, floor, floor + 1)
            fence_after = floor + 1.0
        self._fence_after[host] = fence_after

    def fill(self, host: str, answer: pb.HeartbeatResponse) -> pb.HeartbeatResponse:
        answer.ha_config = True
        answer.ha_enabled = self._pool_ha.enabled
        answer.fence_after_ms = round(self.fence_after(host) * 1000)
        answer.detect_bound_ms = round(self.detect_bound * 1000)
        del answer.peers[:]
        answer.peers.extend(pb.HaPeer(host_uuid=h.uuid, address=h.address)
                            for h in sorted(self._store.list("host"), key=lambda h: h.uuid)
                            if h.uuid != host and h.address)
        return answer

    def on_changes(self, changes: list[Change]) -> None:
        """A store listener: a change of the pool object or of a host is pushed."""
        if any(c.class_name in WATCHED for c in changes):
            self.announce()

    def announce(self) -> None:
        if self.push is None:
            return
        for host in list(self.open_hosts()):
            self.push(host, self.fill(host, pb.HeartbeatResponse()))

    def forget(self, host: str) -> None:
        self._fence_after.pop(host, None)
