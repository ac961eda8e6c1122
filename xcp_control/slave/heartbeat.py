"""The slave's heartbeat client: one bidirectional LivenessService.Heartbeat
stream to the master, kept open for the life of the slave.

Protocol (liveness_service.proto): the first message is a Hello with the full
domain list; the master's first reply gives its PING interval and the report
interval; then a report (a Beat) whenever memory or the domain list changes
and at least once per report interval (reports.ReportPolicy). Liveness itself
is the transport's: the master's gRPC core PINGs the connection and ours
answers, so a steady host wakes neither side's Python between reports. A
steady report carries only seq, memory_free and the domain-list digest; the
full list goes only when the master does not hold the current one
(reports.BeatComposer). Replies are read concurrently with the writes.

A broken stream is retried by `backoff.Reconnect`: within about one
reconnect_cap when the master cannot be reached, growing up to 5 minutes when
it turned us away. `stop()` says Goodbye first, so the master marks the host
down at once rather than dead_after later.

HA (master/ha_config.py): the leader's HA config arrives with the Hello answer
and is pushed on change; the slave keeps what it applied (the generation, its
witness list and that list's version) across streams, says what it holds in
each Hello, and answers every config it applies with a report at once
(Beat.ha_ack): the leader records it, so that any leader knows which list the
host may hold and whether it heard that HA is on.

What the slave may conclude (README, "Timing"): while the stream is open the
master counts this host live; `connected` says so. Every wait is bounded:
writes by two intervals, the Hello reply by five, a silent master by the
channel's keepalive (rpc/options.heartbeat_channel_options).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

import grpc

from xcp.v1 import liveness_service_pb2 as pb
from xcp.v1 import liveness_service_pb2_grpc as pb_grpc
from xcp_control.rpc.channels import open_channel
from xcp_control.rpc.options import heartbeat_channel_options, heartbeat_transport_bound
from xcp_control.security.pki import MASTER_NAME
from xcp_control.slave.backoff import (DEFAULT_INTERVAL, Reconnect, TurnedAway, hello_timeout,
                                       turned_away)
from xcp_control.slave.hypervisor import Hypervisor
from xcp_control.slave.masters import MasterList
from xcp_control.slave.self_fence import HaConfig
from xcp_control.slave.reports import BeatComposer, DomainSnapshot, HostIdentity, ReportPolicy

__all__ = ["HeartbeatClient", "HostIdentity", "Reconnect", "StreamEnded"]

log = logging.getLogger(__name__)

_MIN_INTERVAL, _MAX_INTERVAL = 0.01, 600.0  # bounds on what a master may ask for
_MIN_IO_TIMEOUT = 0.5  # seconds: floor of the bound on a write
_GOODBYE_GRACE = 0.5  # seconds we wait for the master to end the call after Goodbye


class StreamEnded(Exception):
    """The master ended or never answered the heartbeat stream."""


class Redirected(Exception):
    """A new leader called us (reconnect_to): the stream ends to go there."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


def _bounded(ms: int, fallback: float) -> float:
    return min(max(ms / 1000, _MIN_INTERVAL), _MAX_INTERVAL) if ms > 0 else fallback


class HeartbeatClient:
    """Keeps one heartbeat stream to the master open until `stop()`.

    `run()` loops: connect, Hello, report until the stream fails, back off,
    again. The domain list is re-read from the hypervisor only after its change
    listener fired, so a steady report costs no hypervisor call."""

    def __init__(self, master: str, identity: HostIdentity, hypervisor: Hypervisor, *,
                 reconnect_cap: float = DEFAULT_INTERVAL, interval: float = DEFAULT_INTERVAL,
                 rng: random.Random | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 reconnect: Reconnect | None = None,
                 on_epoch: Callable[[int], None] | None = None,
                 fence_after: float = 0.0,
                 on_ha: Callable[[HaConfig], None] | None = None,
                 fenced: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # Several masters (comma-separated): which one to talk to (masters.py).
        self._masters = MasterList(master)
        self._on_epoch = on_epoch
        self._fence_after_ms = round(fence_after * 1000)  # sent in the Hello (HA)
        self._on_ha = on_ha  # told each HA config the leader sends
        self._fenced = fenced  # HA: whether we fenced since last acknowledged (in the Hello)
        self._credentials = credentials  # mutual TLS with the pool, or None for plaintext
        self.identity = identity
        self._hv = hypervisor
        self._interval = interval
        self._channel_interval = interval  # what the current stream's channel was built for
        self._report_interval = interval
        self._reconnect = reconnect or Reconnect(reconnect_cap, rng=rng)
        self._clock = clock
        self._stop = asyncio.Event()
        self._retry = asyncio.Event()  # retry_now(): end the backoff wait
        self._stop_reason = "shutdown"
        self._redirect = asyncio.Event()  # reconnect_to: leave this stream, skip the backoff
        self._in_session = False  # a stream to `master` is open or being opened
        self._finished = asyncio.Event()
        self._changed = asyncio.Event()  # domains changed, or the master asked for them
        self._vouch = False  # the leader asked for a report now (report_now: HA's proof)
        # HA: what we hold of the leader's config (it outlives a stream: the
        # leader recorded it, ha_config.py), and whether to acknowledge it.
        self.ha_held = HaConfig()
        self._ha_ack = False
        self._running = False
        self._snapshot: DomainSnapshot | None = None
        self._snapshot_version = -1  # value of _domain_changes the snapshot reflects
        self._domain_changes = 0  # bumped by the hypervisor's change listener
        self._unsubscribe = hypervisor.add_listener(self._domains_changed)
        self.connected_since: float | None = None  # when the Hello was answered; None: down
        self.sessions = 0  # Hello replies received so far, for tests and metrics
        self.reports = 0  # Beats sent, for tests and metrics

    @property
    def connected(self) -> bool:
        """A Hello was answered and the stream is up."""
        return self.connected_since is not None

    @connected.setter
    def connected(self, up: bool) -> None:
        if not up:
            self.connected_since = None
        elif self.connected_since is None:
            self.connected_since = self._clock()

    def retry_now(self) -> None:
        """Try the master again at once, skipping what is left of the backoff
        (HA: a slave whose held lease ended must rejoin quickly)."""
        self._reconnect.welcomed()
        self._retry.set()

    @property
    def master(self) -> str:
        """The master the stream goes (or went) to."""
        return self._masters.current

    @property
    def interval(self) -> float:
        """Seconds between the master's PINGs, as it last said."""
        return self._interval

    @property
    def transport_bound(self) -> float:
        """How long the current stream's channel may take to notice a silent
        master (it was built before the master said its interval, so it is
        the channel's, not the master's, that counts)."""
        return heartbeat_transport_bound(self._channel_interval)

    @property
    def report_interval(self) -> float:
        """Longest time between two reports, as the master last said."""
        return self._report_interval

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
                except Redirected:
                    self.connected = False
                    continue  # at once: the new leader is waiting for us
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                    busy = turned_away(exc)
                    if self.connected:
                        self._masters.welcomed()
                    delay = self._masters.after_failure(exc)
                    if delay is not None:  # a follower named the leader: go there
                        self.connected = False
                        await self._sleep_unless_stopped(delay)  # bounded: never a hot loop
                        continue
                    self._log_failure(exc, quiet=outage_logged and not self.connected)
                    outage_logged = True
                else:
                    outage_logged = False
                self.connected = False
                if not self._stop.is_set():
                    await self._sleep_unless_stopped(self._reconnect.after_failure(busy))
        finally:
            self.connected = False
            self._unsubscribe()
            self._finished.set()

    def _log_failure(self, exc: Exception, quiet: bool) -> None:
        if quiet:
            log.debug("master %s still unreachable: %s", self.master, _describe(exc))
        else:
            log.info("heartbeat stream to master %s down (%s); reconnecting",
                     self.master, _describe(exc))
        if not isinstance(exc, (grpc.aio.AioRpcError, StreamEnded, TimeoutError, TurnedAway)):
            log.debug("unexpected heartbeat failure", exc_info=True)

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

    def reconnect_to(self, leader: str) -> bool:
        """A new leader (its epoch already admitted: fencing.py) asked us to
        stream to it: end the current stream, or the backoff, and go there
        at once. False when a stream to it is open or being opened already."""
        if self._stop.is_set() or (leader == self.master and self._in_session):
            return False
        log.info("leader %s called: leaving master %s for it", leader, self.master)
        self._masters.go_to(leader)
        self._redirect.set()
        return True

    # -- one stream ----------------------------------------------------------

    async def _session(self) -> None:
        # A fresh channel per stream with its own subchannel: a shared or reused
        # one could still sit in gRPC's own reconnect backoff, and a retry would
        # then fail at once however long we waited.
        self._channel_interval = self._interval
        self._redirect.clear()
        self._in_session = True
        options = heartbeat_channel_options(self._interval) + [
            ("grpc.use_local_subchannel_pool", 1)]
        channel = open_channel(self.master, options, self._credentials, MASTER_NAME)
        try:
            async with channel:
                call = pb_grpc.LivenessServiceStub(channel).Heartbeat()
                stopping = asyncio.ensure_future(self._stop.wait())
                redirected = asyncio.ensure_future(self._redirect.wait())
                conversing = asyncio.ensure_future(self._converse(call, stopping))
                try:
                    await asyncio.wait({conversing, redirected},
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not conversing.done():  # no Goodbye: that master is not the leader
                        raise Redirected()
                    conversing.result()
                finally:
                    for future in (conversing, stopping, redirected):
                        future.cancel()
                    call.cancel()
                    await asyncio.wait({conversing})  # its own clean-up, before the close
        finally:
            self._in_session = False

    async def _converse(self, call, stopping: asyncio.Future) -> None:
        composer = BeatComposer()
        snapshot = await self._current_domains()
        hello = composer.hello(self.identity, self._hv.memory_total, self._hv.memory_free,
                               self._hv.enabled, snapshot)
        hello.hello.hypervisor_unavailable = not self._hv.available  # the list is stale
        hello.hello.fence_after_ms = self._fence_after_ms
        hello.hello.fenced = self._fenced()
        hello.hello.transport_bound_ms = round(self.transport_bound * 1000)
        hello.hello.ha_generation = self.ha_held.generation  # what we hold (an acknowledgement)
        hello.hello.ha_witness_version = self.ha_held.witness_version
        self._ha_ack = False  # the Hello says it
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
            log.info("connected to master %s as host %s (PING every %.3fs, report every %.3fs)",
                     self.master, self.identity.uuid, self._interval, self._report_interval)
            reader = asyncio.ensure_future(self._read_replies(call, composer))
            await self._report(call, composer, reader, stopping)
        finally:
            reader.cancel()

    async def _report(self, call, composer: BeatComposer, reader: asyncio.Future,
                      stopping: asyncio.Future) -> None:
        """A report on every change and at least once per report interval,
        until the stream ends or we stop."""
        loop = asyncio.get_running_loop()
        policy = ReportPolicy(self._report_interval, self._interval, self._hv.memory_total)
        policy.sent(loop.time(), self._hv.memory_free)  # the Hello was one
        while True:
            self._changed.clear()
            memory = self._hv.memory_free
            if policy.due(loop.time(), memory, self._domains_stale() or composer.must_resend
                          or self._vouch or self._ha_ack):
                snapshot = await self._current_domains()
                beat = composer.beat(memory, snapshot)
                if self._vouch:  # how long we have seen this stream up
                    self._vouch = False
                    beat.beat.connected_for_ms = round(
                        max(self._clock() - (self.connected_since or self._clock()), 0) * 1000)
                if self._ha_ack:  # the HA config we applied (the leader records it)
                    self._ha_ack = False
                    beat.beat.ha_ack = True
                    beat.beat.ha_generation = self.ha_held.generation
                    beat.beat.ha_witness_version = self.ha_held.witness_version
                # A backend that lost its hypervisor (libvirt) says so: its list is stale.
                beat.beat.hypervisor_unavailable = not self._hv.available
                await self._write(call, beat)
                policy.sent(loop.time(), memory)
                self.reports += 1
            waker = asyncio.ensure_future(self._changed.wait())
            try:
                done, _ = await asyncio.wait(
                    {reader, stopping, waker}, timeout=max(0.0, policy.next_check(loop.time())
                                                           - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
            if stopping in done:
                await self._goodbye(call, reader)
                return
            if reader in done:
                reader.result()  # raises the stream's error, if it ended with one
                raise StreamEnded("master ended the stream")

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
        if response.epoch and self._on_epoch is not None:
            self._on_epoch(response.epoch)
        if response.send_domains:
            self._changed.set()
        if response.report_now:
            self._vouch = True
            self._changed.set()
        if response.interval_ms:  # a full answer, not a pushed HA config or question
            self._interval = _bounded(response.interval_ms, self._interval)
            # An older master sets no report interval: it wants one report per interval.
            self._report_interval = _bounded(response.report_interval_ms, self._interval)
        # Last: the lease's transport bound follows the interval just taken.
        if response.ha_config:
            held = self.ha_held
            peers, version = held.peers, held.witness_version  # kept unless a list comes
            if response.witness_version:
                peers = tuple((p.host_uuid, p.address) for p in response.peers)
                version = response.witness_version
            self.ha_held = HaConfig(
                enabled=response.ha_enabled, fence_after=response.fence_after_ms / 1000,
                detect_bound=response.detect_bound_ms / 1000, epoch=response.epoch,
                peers=peers, witness_version=version,
                generation=response.ha_generation if response.ha_enabled else 0)
            if self._on_ha is not None:
                self._on_ha(self.ha_held)
            self._ha_ack = True  # applied: say so in a report at once
            self._changed.set()

    def _domains_changed(self) -> None:
        self._domain_changes += 1
        self._changed.set()

    def _domains_stale(self) -> bool:
        return self._snapshot is None or self._snapshot_version != self._domain_changes

    async def _current_domains(self) -> DomainSnapshot:
        if self._domains_stale():
            # Remember the version read *before* the await: a change during it
            # leaves the snapshot stale and the next report reads again.
            version = self._domain_changes
            self._snapshot = DomainSnapshot.of(await self._hv.list_domains())
            self._snapshot_version = version
        return self._snapshot

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        """Sleep `seconds`, less if stopped, told to retry now (also by a
        retry_now() that came while the last attempt ran), or by a new
        leader's call (reconnect_to)."""
        waits = {asyncio.ensure_future(e.wait())
                 for e in (self._stop, self._retry, self._redirect)}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            self._retry.clear()
