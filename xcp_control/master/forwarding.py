"""Message forwarding: how the master calls a slave (xapi's Message_forwarding).

xapi reuses a cached connection with no deadline and no keepalive, so a call to
a hung or partitioned host waits for the kernel's TCP timeout: the seed's 20
minutes. Here:

- a host known to be down fails at once with HOST_OFFLINE, before any network
  traffic;
- each slave has one pooled channel, created on first use, replaced when the
  host's address changes and closed when the host is forgotten;
- connecting is bounded by contact_timeout, and a peer that goes silent in the
  middle of a call is caught by keepalive pings within contact_timeout
  (transport.forwarding_channel_options);
- every call has a deadline: the operation's timeout, or less when the
  client's own deadline is nearer (gRPC propagates what remains to the slave);
- when liveness declares a host not live, every call in flight to it fails at
  once with HOST_OFFLINE and its channel is dropped, so that the host's return
  is met with a fresh connection;
- transport failures become catalogued errors in one place, `translate`, by one
  table; catalogued errors from the slave pass through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import Message

from xcp_control import errors
from xcp_control.errors import XcpError
from xcp_control.master.liveness import Liveness
from xcp_control.security.pki import host_dns_name
from xcp_control.master.store import Store
from xcp_control.rpc.channels import open_channel
from xcp_control.rpc.options import forwarding_channel_options
from xcp.v1 import slave_service_pb2_grpc

log = logging.getLogger(__name__)

# listener(method, reason, seconds) for each forwarded call that ended:
# reason "OK" or the catalogued reason it failed with.
CallListener = Callable[[str, str, float], None]
OK = "OK"

# Time kept back from the client's deadline so that our answer, not its own
# DEADLINE_EXCEEDED, reaches it.
DEADLINE_MARGIN = 0.05
_READY = grpc.ChannelConnectivity.READY
# The leader's epoch on every call to a slave (several masters on etcd).
EPOCH_HEADER = "xcp-epoch"


def _cannot_contact(host: str, operation: str) -> XcpError:
    return XcpError("CANNOT_CONTACT_HOST", host=host)


def _timed_out(host: str, operation: str) -> XcpError:
    return XcpError("OPERATION_TIMED_OUT", host=host, operation=operation)


def _internal(host: str, operation: str) -> XcpError:
    return XcpError("INTERNAL_ERROR", detail=f"host {host} failed {operation} without a reason")


# The one translation table: what a failed call to a slave means to our caller.
# UNAVAILABLE covers refused connections, resets and keepalive ping timeouts (a
# silent peer); CANCELLED is a channel closed under the call (the host's
# address changed or it was forgotten); a DEADLINE_EXCEEDED can only come from
# a peer that still answered pings (a silent one fails sooner, UNAVAILABLE).
TRANSLATION: dict[grpc.StatusCode, Callable[[str, str], XcpError]] = {
    grpc.StatusCode.UNAVAILABLE: _cannot_contact,
    grpc.StatusCode.CANCELLED: _cannot_contact,
    grpc.StatusCode.DEADLINE_EXCEEDED: _timed_out,
}


def translate(exc: grpc.RpcError, host: str, operation: str) -> XcpError:
    """The catalogued error for a failed call to `host`."""
    passed_on = XcpError.from_rpc_error(exc)
    if passed_on is not None:
        return passed_on
    return TRANSLATION.get(exc.code(), _internal)(host, operation)


class ConnectFailed(grpc.RpcError):
    """No transport to the slave within the connect budget: an UNAVAILABLE that
    no channel raised, so it goes through the same table."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self._detail = detail

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._detail

    def trailing_metadata(self):
        return None


@dataclass
class _Peer:
    """The pooled channel to one slave."""

    address: str
    channel: grpc.aio.Channel
    stub: slave_service_pb2_grpc.SlaveServiceStub


@dataclass(eq=False)
class _InFlight:
    """A forwarded call, so that a host's death can fail it at once: `task`
    is the caller's own task (the servicer's), cancelled with `offline` set."""

    task: asyncio.Task
    offline: bool = field(default=False)


class Forwarder:
    """Calls slaves on behalf of the master's API."""

    def __init__(self, store: Store, liveness: Liveness, contact_timeout: float,
                 clock: Callable[[], float],
                 credentials: grpc.ChannelCredentials | None = None,
                 fence: Callable[[], int] | None = None,
                 ready: Callable[[float | None], Awaitable[int]] | None = None) -> None:
        self._store = store
        # Several masters: our epoch for every call (HOST_IS_SLAVE while we may
        # not act), so a deposed leader sends no slave command at all; `ready`
        # waits for it, within the caller's deadline, while the term is only
        # suspended (leadership.Gate).
        self._fence = fence
        self._ready = ready
        self._liveness = liveness
        self._contact_timeout = contact_timeout
        self._clock = clock
        self._options = forwarding_channel_options(contact_timeout)
        self._credentials = credentials  # mutual TLS with the pool, or None for plaintext
        self._peers: dict[str, _Peer] = {}
        self._in_flight: dict[str, set[_InFlight]] = {}
        self._closing: set[asyncio.Future] = set()  # channels being closed
        self._call_listeners: list[CallListener] = []

    def add_call_listener(self, listener: CallListener) -> None:
        """Tell listener(method, reason, seconds) how each forwarded call ended
        (a call its own caller cancelled has no outcome and is not told)."""
        self._call_listeners.append(listener)

    async def call(self, host: str, method: str, request: Message, *, operation: str,
                   timeout: float, budget: float | None) -> Message:
        """Call SlaveService.`method` on `host` within min(timeout, budget)."""
        started = self._clock()
        try:
            answer = await self._call(host, method, request, operation, timeout, budget)
        except XcpError as exc:
            self._ended(method, exc.reason, started)
            raise
        except Exception:  # a bug: the servicer answers INTERNAL_ERROR
            self._ended(method, "INTERNAL_ERROR", started)
            raise
        self._ended(method, OK, started)
        return answer

    def _ended(self, method: str, reason: str, started: float) -> None:
        seconds = self._clock() - started
        for listener in self._call_listeners:
            listener(method, reason, seconds)

    async def _call(self, host: str, method: str, request: Message, operation: str,
                    timeout: float, budget: float | None) -> Message:
        _, waited = await self._epoch()  # a master that may not act sends nothing (HOST_IS_SLAVE)
        timeout -= waited  # a suspended term waited for: less time left
        budget = None if budget is None else budget - waited
        if not self._liveness.is_live(host):
            raise errors.host_offline(host)
        deadline = timeout if budget is None else min(timeout, budget - DEADLINE_MARGIN)
        if deadline <= 0:
            raise errors.operation_timed_out(host, operation)
        peer = self._peer(host)
        # The call runs in the caller's task, not one of its own: a host's death
        # cancels that task (one task and one loop round per call fewer).
        flight = _InFlight(asyncio.current_task())
        calls = self._in_flight.setdefault(host, set())
        calls.add(flight)
        try:
            return await self._invoke(peer, method, request, deadline)
        except asyncio.CancelledError:
            if not flight.offline:
                raise
            flight.task.uncancel()  # handled: the caller goes on to answer HOST_OFFLINE
            raise errors.host_offline(host) from None
        except grpc.RpcError as exc:
            raise translate(exc, host, operation) from exc
        finally:
            calls.discard(flight)

    async def _invoke(self, peer: _Peer, method: str, request: Message,
                      deadline: float) -> Message:
        """The slave call itself; connecting first only when there is no
        transport (a READY channel goes straight to the call)."""
        if peer.channel.get_state(try_to_connect=True) != _READY:
            deadline -= await self._connect(peer.channel, min(self._contact_timeout, deadline))
        # The epoch is read after connecting: a term that ended while we
        # waited for the transport sends nothing.
        epoch, waited = await self._epoch()
        deadline -= waited
        metadata = ((EPOCH_HEADER, str(epoch)),) if epoch is not None else None
        return await getattr(peer.stub, method)(request, timeout=max(deadline, 0.001),
                                                metadata=metadata)

    async def _epoch(self) -> tuple[int | None, float]:
        """Our epoch (None with one master) and the seconds spent waiting for
        it (a suspended term), which the caller takes off its deadline."""
        started = self._clock()
        if self._ready is not None:
            epoch = await self._ready(None)
        else:
            epoch = self._fence() if self._fence is not None else None
        return epoch, self._clock() - started

    async def _connect(self, channel: grpc.aio.Channel, budget: float) -> float:
        """Wait for a transport, at most `budget`; a refusal fails at once.
        Returns the seconds it took.

        A new channel to a frozen peer would wait 20 s for the HTTP/2 settings
        (GRPC-FACTS.md): keepalive does not run before the transport is up."""
        ready = _READY
        state = channel.get_state(try_to_connect=True)
        started = self._clock()
        end = started + budget
        while state != ready:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise ConnectFailed("no transport: the last connection attempt failed")
            left = end - self._clock()
            if left <= 0:
                raise ConnectFailed(f"no connection within {budget:.1f}s")
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), left)
            except asyncio.TimeoutError:
                raise ConnectFailed(f"no connection within {budget:.1f}s") from None
            state = channel.get_state(try_to_connect=True)
        return self._clock() - started

    def _peer(self, host: str) -> _Peer:
        record = self._store.get("host", host)
        if record is None:
            raise errors.handle_invalid("host", host)
        peer = self._peers.get(host)
        if peer is not None and peer.address == record.address:
            return peer
        if peer is not None:
            self._retire(peer)
        channel = open_channel(record.address, self._options, self._credentials,
                               host_dns_name(host))
        peer = _Peer(record.address, channel, slave_service_pb2_grpc.SlaveServiceStub(channel))
        self._peers[host] = peer
        return peer

    def _retire(self, peer: _Peer) -> None:
        # Calls still on the old channel fail (CANCELLED: CANNOT_CONTACT_HOST).
        # The closing task is kept referenced until done: asyncio holds only a
        # weak reference, and an unreferenced task can be collected mid-close.
        task = asyncio.ensure_future(peer.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def on_flip(self, host: str, live: bool) -> None:
        if live:
            return
        current = asyncio.current_task()
        for flight in self._in_flight.get(host, ()):
            # A call whose own task flipped the host (DeclareDead inside it) is
            # not mid-await: it learns of the flip from its own result.
            if flight.task is not None and flight.task is not current:
                flight.offline = True
                flight.task.cancel()
        # The connection of a host declared down is not trusted when it returns:
        # after a partition it can still look READY while its packets wait out
        # TCP's retransmission backoff, so the first call would stall for the
        # whole contact budget. The next call opens a fresh one.
        self.forget(host)

    def in_flight(self, host: str) -> int:
        return len(self._in_flight.get(host, ()))

    @property
    def in_flight_total(self) -> int:
        return sum(len(calls) for calls in self._in_flight.values())

    def forget(self, host: str) -> None:
        """Close the host's channel: it left the pool or was declared down."""
        peer = self._peers.pop(host, None)
        if peer is not None:
            self._retire(peer)

    async def close(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(p.channel.close() for p in peers), *self._closing,
                             return_exceptions=True)
