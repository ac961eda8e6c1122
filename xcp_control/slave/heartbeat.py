"""The slave's heartbeat client: one bidirectional LivenessService.Heartbeat
stream to the master, kept open for the life of the slave.

Protocol (liveness_service.proto): the first message is a Hello with the full
domain list; the master's first reply sets the interval; then one Beat per
interval. A steady Beat carries only seq, memory_free and the domain-list
digest (a few dozen bytes); the full list goes only when the master does not
hold the current one (`BeatComposer`). Replies are read concurrently with the
writes. A broken stream is retried with full-jitter exponential backoff
(`Reconnect`), reset by the next successful Hello reply: a master that cannot
be reached (restarting, partitioned) is retried within about one
reconnect_cap, so its restart is absorbed in a second; a master that is up but
turns us away (it sheds new streams while overloaded, or leaves the Hello
unanswered) is given room, growing up to BUSY_BACKOFF_CAP, so that thousands
of slaves do not keep a saturated master saturated with reconnects. `stop()` says
Goodbye first, so the master marks the host down at once rather than at
dead_after.

Every wait is bounded: writes by two intervals, the Hello reply by five, a
silent master by the channel's keepalive ping timeout (transport.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import grpc

from xcp.v1 import liveness_service_pb2 as pb
from xcp.v1 import liveness_service_pb2_grpc as pb_grpc
from xcp_control.model import domains_digest
from xcp_control.slave.hypervisor import DomainInfo, Hypervisor
from xcp_control.security.pki import MASTER_NAME
from xcp_control.rpc.channels import open_channel
from xcp_control.rpc.options import heartbeat_channel_options

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0  # seconds between beats until the master says otherwise
BACKOFF_BASE = 0.1  # seconds: the first reconnect waits up to this long
# Seconds: the longest wait after a master turned us away. Long on purpose: every
# refused attempt costs a saturated master a connection (~4 ms of its core), so
# thousands of waiting slaves must come back slowly for it to ever catch up; 30 s
# kept 8,000 hosts from converging, 300 s let them in (BENCHMARKS.md). The
# ceiling doubles from reconnect_cap, so a brief overload costs only seconds.
BUSY_BACKOFF_CAP = 300.0
HELLO_TIMEOUT_INTERVALS = 5  # a slow master is not a dead one: room for its Hello reply
_MIN_INTERVAL, _MAX_INTERVAL = 0.01, 60.0  # bounds on what a master may ask for
_MIN_IO_TIMEOUT = 0.5  # seconds: floor of the bound on a write
_GOODBYE_GRACE = 0.5  # seconds we wait for the master to end the call after Goodbye


class Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n)).

    Jitter spreads a whole pool's reconnects after a master restart; the cap
    (about one interval) bounds how long a slave stays away once the master
    is back."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = DEFAULT_INTERVAL,
                 rng: random.Random | None = None) -> None:
        if not (base > 0 and cap > 0):
            raise ValueError(f"base and cap must be > 0, got {base}, {cap}")
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def ceiling(self) -> float:
        """The most the next delay can be."""
        return min(self.cap, self.base * 2.0 ** self._attempt)

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling)
        if self.ceiling < self.cap:
            self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0


class TurnedAway(Exception):
    """The master is up but did not take the stream: it left the Hello unanswered."""


def turned_away(exc: BaseException) -> bool:
    """Whether a failed attempt means "the master is busy", not "unreachable":
    the Hello went unanswered, or the master shed the stream (TOO_BUSY,
    RESOURCE_EXHAUSTED)."""
    if isinstance(exc, TurnedAway):
        return True
    return (isinstance(exc, grpc.aio.AioRpcError)
            and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)


class Reconnect:
    """How long to wait before the next attempt to open a heartbeat stream.

    After a failure to reach the master, full jitter up to `cap` (about one
    interval). After the master turned us away, full jitter from `cap` growing
    to `busy_cap`: a saturated master then sheds load instead of gaining it.
    A welcome (the Hello answered) resets both."""

    def __init__(self, cap: float = DEFAULT_INTERVAL, busy_cap: float = BUSY_BACKOFF_CAP,
                 rng: random.Random | None = None) -> None:
        self._unreachable = Backoff(BACKOFF_BASE, cap, rng)
        self._busy = Backoff(cap, max(cap, busy_cap), rng)

    def after_failure(self, busy: bool) -> float:
        """The delay before the next attempt."""
        return (self._busy if busy else self._unreachable).next_delay()

    def welcomed(self) -> None:
        self._unreachable.reset()
        self._busy.reset()


def hello_timeout(interval: float) -> float:
    """How long to wait for the master's reply to a Hello."""
    return max(HELLO_TIMEOUT_INTERVALS * interval, 2.0)


def next_tick(previous: float, interval: float, now: float) -> float:
    """When the beat after the one scheduled at `previous` is due: on the
    original grid (no drift accumulates from late wake-ups), skipping ticks
    already missed rather than sending a burst."""
    due = previous + interval
    if due <= now:
        due += ((now - due) // interval + 1) * interval
    return due


@dataclass(frozen=True)
class HostIdentity:
    """Who this slave is, as the Hello tells the master."""

    uuid: str
    name_label: str
    address: str  # where SlaveService listens, host:port


@dataclass(frozen=True)
class DomainSnapshot:
    """The domain list at one moment, with its digest."""

    domains: tuple[DomainInfo, ...]
    digest: str

    @classmethod
    def of(cls, domains: list[DomainInfo] | tuple[DomainInfo, ...]) -> "DomainSnapshot":
        return cls(tuple(domains), domains_digest(domains))


class BeatComposer:
    """Decides what goes in each message of one stream; no I/O, no clock.

    It tracks the digest of the domain list the master holds: the Hello's, then
    every full list sent (the stream is ordered and reliable, so the master has
    it unless the stream breaks, and then a new Hello resends it), overridden by
    each `domains_ack`. A Beat carries the full list exactly when the current
    digest differs from that, or when the master asked with send_domains. An
    empty domains_ack is no statement (the empty list has its own digest)."""

    def __init__(self) -> None:
        self._seq = 0
        self._master_digest: str | None = None
        self._resend = False

    def hello(self, identity: HostIdentity, memory_total: int, memory_free: int,
              enabled: bool, snapshot: DomainSnapshot) -> pb.HeartbeatRequest:
        self._master_digest = snapshot.digest
        hello = pb.Hello(host_uuid=identity.uuid, name_label=identity.name_label,
                         address=identity.address, memory_total=memory_total,
                         memory_free=memory_free, enabled=enabled,
                         domains=[d.to_proto() for d in snapshot.domains],
                         domains_digest=snapshot.digest)
        return pb.HeartbeatRequest(hello=hello)

    def beat(self, memory_free: int, snapshot: DomainSnapshot) -> pb.HeartbeatRequest:
        self._seq += 1
        beat = pb.Beat(seq=self._seq, memory_free=memory_free, domains_digest=snapshot.digest)
        if self._resend or snapshot.digest != self._master_digest:
            beat.domains_included = True
            beat.domains.extend(d.to_proto() for d in snapshot.domains)
            self._master_digest = snapshot.digest
            self._resend = False
        return pb.HeartbeatRequest(beat=beat)

    def on_response(self, response: pb.HeartbeatResponse) -> None:
        if response.domains_ack:
            self._master_digest = response.domains_ack
        if response.send_domains:
            self._resend = True


class StreamEnded(Exception):
    """The master ended or never answered the heartbeat stream."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


class HeartbeatClient:
    """Keeps one heartbeat stream to the master open until `stop()`.

    `run()` loops: connect, Hello, beat until the stream fails, back off,
    again. The domain list is re-read from the hypervisor only after its change
    listener fired, so a steady beat costs no hypervisor call."""

    def __init__(self, master: str, identity: HostIdentity, hypervisor: Hypervisor, *,
                 reconnect_cap: float = DEFAULT_INTERVAL, interval: float = DEFAULT_INTERVAL,
                 rng: random.Random | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 reconnect: Reconnect | None = None) -> None:
        self.master = master
        self._credentials = credentials  # mutual TLS with the pool, or None for plaintext
        self.identity = identity
        self._hv = hypervisor
        self._interval = interval
        self._reconnect = reconnect or Reconnect(reconnect_cap, rng=rng)
        self._stop = asyncio.Event()
        self._stop_reason = "shutdown"
        self._finished = asyncio.Event()
        self._running = False
        self._snapshot: DomainSnapshot | None = None
        self._snapshot_version = -1  # value of _domain_changes the snapshot reflects
        self._domain_changes = 0  # bumped by the hypervisor's change listener
        self._unsubscribe = hypervisor.add_listener(self._domains_changed)
        self.connected = False  # a Hello was answered and the stream is up
        self.sessions = 0  # Hello replies received so far, for tests and metrics

    @property
    def interval(self) -> float:
        """Seconds between beats, as the master last said."""
        return self._interval

    @property
    def _io_timeout(self) -> float:
        return max(2 * self._interval, _MIN_IO_TIMEOUT)

    # -- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat until `stop()`; never raises for network trouble."""
        self._running = True
        outage_logged = False
        try:
            while not self._stop.is_set():
                busy = False
                try:
                    await self._session()
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                    busy = turned_away(exc)
                    if self.connected or not outage_logged:
                        log.info("heartbeat stream to master %s down (%s); reconnecting",
                                 self.master, _describe(exc))
                        outage_logged = True
                    else:
                        log.debug("master %s still unreachable: %s", self.master, _describe(exc))
                    if not isinstance(exc, (grpc.aio.AioRpcError, StreamEnded, TimeoutError,
                                            TurnedAway)):
                        log.debug("unexpected heartbeat failure", exc_info=True)
                else:
                    outage_logged = False
                self.connected = False
                if not self._stop.is_set():
                    await self._sleep_unless_stopped(self._reconnect.after_failure(busy))
        finally:
            self.connected = False
            self._unsubscribe()
            self._finished.set()

    async def stop(self, reason: str = "shutdown", timeout: float = 2.0) -> None:
        """Say Goodbye(reason) on the open stream, close it and end `run()`;
        returns within `timeout`."""
        self._stop_reason = reason
        self._stop.set()
        if not self._running:
            return
        try:
            await asyncio.wait_for(self._finished.wait(), timeout)
        except TimeoutError:
            log.warning("heartbeat client did not stop within %.1fs", timeout)

    # -- one stream ----------------------------------------------------------

    async def _session(self) -> None:
        # A fresh channel per stream with its own subchannel: a shared or reused
        # one could still sit in gRPC's own reconnect backoff, and a retry would
        # then fail at once however long we waited.
        options = heartbeat_channel_options(self._interval) + [
            ("grpc.use_local_subchannel_pool", 1)]
        channel = open_channel(self.master, options, self._credentials, MASTER_NAME)
        async with channel:
            call = pb_grpc.LivenessServiceStub(channel).Heartbeat()
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                await self._converse(call, stopping)
            finally:
                stopping.cancel()
                call.cancel()

    async def _converse(self, call, stopping: asyncio.Future) -> None:
        composer = BeatComposer()
        snapshot = await self._current_domains()
        hello = composer.hello(self.identity, self._hv.memory_total, self._hv.memory_free,
                               self._hv.enabled, snapshot)
        hello.hello.hypervisor_unavailable = not self._hv.available  # the list is stale
        await self._write(call, hello)
        reader = asyncio.ensure_future(call.read())
        try:
            wait = hello_timeout(self._interval)
            done, _ = await asyncio.wait({reader, stopping}, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                await self._goodbye(call, reader)
                return
            if reader not in done:
                raise TurnedAway(f"no reply to Hello within {wait:.1f}s")
            welcome = reader.result()
            if welcome is grpc.aio.EOF:
                raise StreamEnded("master closed the stream before answering Hello")
            self._apply(composer, welcome)
            self._reconnect.welcomed()
            self.connected = True
            self.sessions += 1
            log.info("connected to master %s as host %s (interval %.3fs)",
                     self.master, self.identity.uuid, self._interval)
            reader = asyncio.ensure_future(self._read_replies(call, composer))
            await self._beat(call, composer, reader, stopping)
        finally:
            reader.cancel()

    async def _beat(self, call, composer: BeatComposer, reader: asyncio.Future,
                    stopping: asyncio.Future) -> None:
        """One Beat per interval until the stream ends or we stop."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval
        while True:
            done, _ = await asyncio.wait({reader, stopping}, timeout=max(0.0, due - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                await self._goodbye(call, reader)
                return
            if reader in done:
                reader.result()  # raises the stream's error, if it ended with one
                raise StreamEnded("master ended the stream")
            snapshot = await self._current_domains()
            beat = composer.beat(self._hv.memory_free, snapshot)
            beat.beat.hypervisor_unavailable = not self._hv.available
            await self._write(call, beat)
            due = next_tick(due, self._interval, loop.time())

    async def _read_replies(self, call, composer: BeatComposer) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            self._apply(composer, response)

    async def _goodbye(self, call, reader: asyncio.Future) -> None:
        """Goodbye, half-close, then give the master a moment to end the call,
        so the Goodbye is processed before the channel closes. Best effort:
        a master that is gone marks us down when the stream breaks anyway."""
        try:
            await self._write(call, pb.HeartbeatRequest(
                goodbye=pb.Goodbye(reason=self._stop_reason)))
            await asyncio.wait_for(call.done_writing(), _GOODBYE_GRACE)
            await asyncio.wait({reader}, timeout=_GOODBYE_GRACE)
            log.info("said goodbye to master %s (%s)", self.master, self._stop_reason)
        except Exception as exc:  # noqa: BLE001 - stopping regardless
            log.info("could not say goodbye to master %s: %s", self.master, _describe(exc))

    # -- helpers -------------------------------------------------------------

    async def _write(self, call, request: pb.HeartbeatRequest) -> None:
        await asyncio.wait_for(call.write(request), self._io_timeout)

    def _apply(self, composer: BeatComposer, response: pb.HeartbeatResponse) -> None:
        composer.on_response(response)
        if response.interval_ms > 0:
            self._interval = min(max(response.interval_ms / 1000, _MIN_INTERVAL), _MAX_INTERVAL)

    def _domains_changed(self) -> None:
        self._domain_changes += 1

    async def _current_domains(self) -> DomainSnapshot:
        if self._snapshot is None or self._snapshot_version != self._domain_changes:
            # Remember the version read *before* the await: a change during it
            # leaves the snapshot stale and the next beat reads again.
            version = self._domain_changes
            self._snapshot = DomainSnapshot.of(await self._hv.list_domains())
            self._snapshot_version = version
        return self._snapshot

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass
