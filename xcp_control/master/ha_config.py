"""What the leader tells each slave about HA, on its heartbeat stream.

The Hello answer carries the pool's HA config (enabled, the host's own
fence_after, the leader's detection bound); switching HA on or off is pushed
to every open stream at once. The other hosts' SlaveService addresses (the
peers, for the liveset rule) follow on the stream while HA is enabled, and
again whenever the pool's set of peers changes. Nothing here runs per beat:
only a Hello, a SetHaConfig or a host joining, leaving or moving does work.

Why the peers travel apart, and paced: a peer list is O(hosts) per stream,
so telling every stream about every change is O(hosts^2) per change, O(hosts^3)
for a pool of 10,000 joining (BENCHMARKS.md, HA restart: 300 hosts took 42,000
pushes carrying 8.5 million peers). Instead the list is encoded once per
change of the peer set (each peer's bytes kept, one sort). A stream's message
is its own settings' few bytes joined to that encoding less its own entry,
sent as bytes (never parsed or serialized per stream). Delivery passes send
it to the streams that lack the current list, oldest lists first, yielding to
the loop every few milliseconds and within PEER_RATE bytes a second; passes
are MIN_GAP apart at least, so a burst of joins is delivered about once per
pass, not once per join, at a bounded share of the master's core. The first
pass after a quiet spell runs at once.

A slave without the current list is on the safe side of the liveset rule:
with no peers it fences when it loses the leader (it never keeps its domains
by a rule it cannot check); a list short of new hosts is what a slave
partitioned before a push holds anyway (BENCHMARKS.md: a note for the lease
rule).

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

import asyncio
import logging
from typing import Callable, Iterable

from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.store import Change, Store
from xcp.v1 import liveness_service_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_FENCE_AFTER = 10.0  # seconds: a slave that sends none (DESIGN.md)
YIELD_EVERY = 0.005  # seconds of delivery work between two turns of the event loop
# Peer lists sent per second at most: serialising and sending is paid per byte
# (BENCHMARKS.md, HA restart: +8-12 points of a core here). 10,000 hosts' lists are
# 5.7 GB (570 KB each): about 3 minutes; 1,000 hosts' 57 MB, 1.8 s.
PEER_RATE = 32 * 2**20
MIN_GAP = 0.25  # seconds between two passes at least: a burst of joins is one delivery
SLOW_PASS = 10.0  # seconds: a pass this long is logged

# A message, or one already encoded (the peers: rpc/server.PreEncodedResponses).
Push = Callable[[str, "pb.HeartbeatResponse | bytes"], None]


class PeerList:
    """The pool's hosts with a SlaveService address, encoded once per change:
    `without(host)` is the peers field of one host's config, as bytes."""

    def __init__(self) -> None:
        self._encoded: dict[str, bytes] = {}  # host -> its HaPeer as field 10
        self._addresses: dict[str, str] = {}
        self.version = 0
        self._blob: bytes | None = None
        self._spans: dict[str, tuple[int, int]] = {}

    def set(self, host: str, address: str) -> bool:
        """The host's address now (empty: none, or gone); True if that changed."""
        if self._addresses.get(host, "") == address:
            return False
        if address:
            self._addresses[host] = address
            self._encoded[host] = pb.HeartbeatResponse(
                peers=[pb.HaPeer(host_uuid=host, address=address)]).SerializeToString()
        else:
            self._addresses.pop(host, None)
            self._encoded.pop(host, None)
        self.version += 1
        self._blob = None
        return True

    def without(self, host: str) -> bytes:
        if self._blob is None:  # once per change: one sort, one join
            parts, spans, at = [], {}, 0
            for uuid in sorted(self._encoded):
                part = self._encoded[uuid]
                parts.append(part)
                spans[uuid] = (at, at + len(part))
                at += len(part)
            self._blob, self._spans = b"".join(parts), spans
        start, end = self._spans.get(host, (0, 0))
        return self._blob[:start] + self._blob[end:]

    def __len__(self) -> int:
        return len(self._encoded)


class HaAnnouncer:
    """Fills the HA config into Hello answers, pushes it on change, and
    delivers the peers (see the module's docstring)."""

    def __init__(self, store: Store, pool_ha: PoolHa, detect_bound: float,
                 transport_bound: float = 0.0, min_gap: float = MIN_GAP,
                 peer_rate: float = PEER_RATE) -> None:
        self._store = store
        self._min_gap = min_gap
        self._rate = peer_rate
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
        self._peers: PeerList | None = None  # built from the store when first needed
        self._delivered: dict[str, int] = {}  # host -> PeerList.version its stream has
        self._joining: set[str] = set()  # Hello taken, answer not yet given
        self._enabled: bool | None = None  # what the open streams were last told
        self._delivery: asyncio.Task | None = None
        self._not_before = 0.0  # loop time: the next delivery pass (pacing)
        self.passes = 0  # delivery passes run (tests, diagnostics)

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
        # Its new stream opens once the answer is given: no peers to the old one meanwhile.
        self._joining.add(host)
        self._delivered.pop(host, None)

    def fill(self, host: str, answer: pb.HeartbeatResponse) -> pb.HeartbeatResponse:
        """The Hello answer: the config without peers (they follow on the
        stream, which is open as soon as this answer is given)."""
        self._joining.discard(host)
        self._config(host, answer)
        self._schedule()
        return answer

    def _config(self, host: str, answer: pb.HeartbeatResponse) -> pb.HeartbeatResponse:
        answer.ha_config = True
        answer.ha_enabled = self._pool_ha.enabled
        answer.fence_after_ms = round(self.fence_after(host) * 1000)
        answer.detect_bound_ms = round(self.detect_bound * 1000)
        return answer

    def with_peers(self, host: str) -> bytes:
        """The full config of one host, encoded: its own settings, then every
        other peer (two encodings joined are one message with both's fields)."""
        head = self._config(host, pb.HeartbeatResponse()).SerializeToString()
        return head + self._peer_list().without(host)

    def _peer_list(self) -> PeerList:
        if self._peers is None:
            self._peers = PeerList()
            for h in self._store.list("host"):
                self._peers.set(h.uuid, h.address)
        return self._peers

    # -- changes -------------------------------------------------------------

    def on_changes(self, changes: list[Change]) -> None:
        """A store listener: HA switched on or off is pushed to every stream at
        once; a host joining, leaving or changing address changes the peers."""
        peers_changed = False
        for c in changes:
            if c.class_name == "host" and self._peers is not None:
                address = "" if c.op == "DEL" else c.obj.address
                peers_changed |= self._peers.set(c.uuid, address)
        if any(c.class_name == "pool" for c in changes):
            self._announce_enabled()
        if peers_changed:
            self._schedule()

    def _announce_enabled(self) -> None:
        enabled = self._pool_ha.enabled
        if enabled == self._enabled or self.push is None:
            return  # another HA setting changed: nothing the slaves use
        self._enabled = enabled
        # Small messages, all at once: from now on every slave fences on a lost
        # lease (its peers follow), or none does.
        for host in list(self.open_hosts()):
            self.push(host, self._config(host, pb.HeartbeatResponse()))
        self._delivered.clear()
        self._schedule()

    def forget(self, host: str) -> None:
        self._fence_after.pop(host, None)
        self._delivered.pop(host, None)
        self._joining.discard(host)

    # -- delivering the peers ------------------------------------------------

    def _schedule(self) -> None:
        """Start a delivery pass unless one runs (it picks this change up)."""
        if self.push is None or not self._pool_ha.enabled:
            return
        if self._delivery is None or self._delivery.done():
            try:
                self._delivery = asyncio.get_running_loop().create_task(self._deliver())
            except RuntimeError:  # no loop (a plain test): nothing is open either
                self._delivery = None

    def _stale(self) -> list[str]:
        """Open streams without the current peers, oldest list first (none
        yet, then by version): a pass cut short by a change serves the rest
        first next time."""
        version = self._peer_list().version
        stale = [h for h in self.open_hosts()
                 if self._delivered.get(h) != version and h not in self._joining]
        return sorted(stale, key=lambda h: self._delivered.get(h, -1))

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pool_ha.enabled and self.push is not None and (hosts := self._stale()):
            if loop.time() < self._not_before:
                await asyncio.sleep(self._not_before - loop.time())
                continue  # what is stale may have changed meanwhile
            started = turn = loop.time()
            peers = self._peer_list()
            version, sent, streams = peers.version, 0, 0
            for host in hosts:
                if self._delivered.get(host) == version or host in self._joining:
                    continue  # answered meanwhile, or a new stream about to open
                encoded = self.with_peers(host)
                self.push(host, encoded)
                self._delivered[host] = version
                sent, streams = sent + len(encoded), streams + 1
                # Heartbeats, Hellos and API calls go first; the bytes stay
                # within their rate (serialising and sending cost per byte).
                ahead = sent / self._rate - (loop.time() - started)
                if ahead > 0 or loop.time() - turn >= YIELD_EVERY:
                    await asyncio.sleep(max(0.0, ahead))
                    turn = loop.time()
                    if self._peer_list().version != version:
                        break  # changed again: the rest get the new list
            self.passes += 1
            took = loop.time() - started
            if took >= SLOW_PASS:
                log.warning("HA: peers (%d hosts, %.0f MB) delivered to %d streams in %.1fs",
                            len(peers), sent / 2**20, streams, took)
            self._not_before = loop.time() + self._min_gap

    async def delivered(self, timeout: float = 5.0) -> None:
        """Until no open stream lacks the current peers (tests)."""
        async def idle() -> None:
            while self._delivery is not None and not self._delivery.done():
                await asyncio.shield(self._delivery)
        await asyncio.wait_for(idle(), timeout)
