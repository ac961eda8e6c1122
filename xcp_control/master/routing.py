"""Which master answers a call, with several masters on etcd: the one place.

- On the acting leader, a call runs here; it is tracked, so that when the
  leader's term ends every call in flight stops at once rather than finishing
  on a deposed term: one that never acted (no etcd write queued, no slave
  called: `leadership.CallTerm.acted`) goes round again, as if it had just
  arrived (so it is passed on to the new leader), the others fail with
  HOST_IS_SLAVE naming the new leader when known. A term only *suspended*
  (renewals failing for a moment, e.g. while etcd elects a new raft leader)
  stops nothing: the calls wait at the gate (leadership.Gate), within their
  deadlines, and go on with the same epoch once a renewal is confirmed.
- On a follower that knows the leader, the call is passed on to it as raw
  bytes (any method, unary or server-streaming, Watch included) within the
  caller's own deadline, with its metadata; the leader's answer, error
  details included, comes back unchanged. A call passed on once is never
  passed on again (no loops while masters disagree for a moment).
- With no leader: reads (Get*/List*) are answered from the warm copy with
  the response header `xcp-stale: true` (they may lag the pool's last
  writes); a write waits a moment for a term (ours resumed, or another
  leader), then runs or is passed on; else HOST_IS_SLAVE with an empty
  `master`. A Watch is served by a leader whose term is suspended (from its
  copy), refused elsewhere.

Served by every master itself: PoolService.GetPool (who leads), LivenessService
(a follower answers the Hello with HOST_IS_SLAVE naming the leader), health
and reflection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc
from google.protobuf.message import DecodeError

from xcp_control import errors
from xcp_control.master.leadership import CALL, CallTerm, Term
from xcp_control.rpc.channels import open_channel
from xcp_control.security import auth
from xcp_control.security.pki import MASTER_NAME

log = logging.getLogger(__name__)

PASSED_ON = "xcp-passed-on"  # metadata set on a call a follower passes on
STALE = "xcp-stale"  # response header: answered from a follower's warm copy
# PoolService.SetHaConfig is a write like any other: it goes to the leader.
LOCAL_SERVICES = ("/xcp.v1.PoolService/GetPool", "/xcp.v1.LivenessService/", "/grpc.")
READS = frozenset({
    "/xcp.v1.HostService/ListHosts", "/xcp.v1.HostService/GetHost",
    "/xcp.v1.HostService/GetHostMetrics", "/xcp.v1.VMService/GetVM",
    "/xcp.v1.VMService/ListVMs",
})
_HOP_HEADERS = ("grpc-", ":", "content-type", "user-agent", "te")
# A write arriving while no leader is visible waits this many leases for one
# (within the caller's deadline): a lease expiring plus an election take up
# to about two, and an etcd member lost (its raft leader) adds a raft
# election to that (ETCD-FACTS.md: writes unavailable 1.3-2.7 s).
AWAIT_LEASES = 3.0
ANSWER_MARGIN = 0.2  # seconds of the caller's deadline kept to run or pass the call on


def _identity(data: bytes) -> bytes:
    return data


def _decoded(handler, raw: bytes):
    try:
        return handler.request_deserializer(raw)
    except DecodeError:
        return errors.UNDECODABLE


class LeaderChannel:
    """One channel to the current leader, replaced when the leader changes."""

    def __init__(self, credentials: grpc.ChannelCredentials | None, options: list) -> None:
        self.credentials, self._options = credentials, options  # mutual TLS as a master
        self._address = ""
        self._channel: grpc.aio.Channel | None = None

    def get(self, address: str) -> grpc.aio.Channel:
        if address != self._address or self._channel is None:
            if self._channel is not None:
                asyncio.ensure_future(self._channel.close())
            self._channel = open_channel(address, self._options, self.credentials, MASTER_NAME)
            self._address = address
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


_AGAIN = object()  # a call deposed before it acted: route it again


class Router(grpc.aio.ServerInterceptor):
    """Runs a call here, passes it on to the leader, or refuses it."""

    def __init__(self, term: Term, clock: Callable[[], float], leader: LeaderChannel) -> None:
        self._term, self._clock, self._leader = term, clock, leader
        self._in_flight: set[asyncio.Task] = set()
        self._deposed: set[asyncio.Task] = set()
        term.add_term_listener(self._on_term_end)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(LOCAL_SERVICES) or handler.request_streaming:
            return handler
        now = self._clock()
        passed_on = any(k == PASSED_ON for k, _ in details.invocation_metadata or ())
        if self._term.acting(now):
            return self._here(handler, method, passed_on)
        leader = self._term.visible_leader(now)
        if leader and leader != self._term.me and not passed_on:
            return self._pass_on(handler, method, leader)
        if method in READS:
            return _rewrap(handler, _stale)
        if not handler.response_streaming:
            return self._deferred(handler, method, passed_on)
        if self._term.suspended(now):
            return _rewrap(handler, self._tracked)  # a Watch: our copy serves it
        return _rewrap(handler, self._refuse)

    # -- on the leader ----------------------------------------------------------

    def _here(self, handler, method: str, passed_on: bool):
        if handler.response_streaming:
            return _rewrap(handler, self._tracked)

        async def unary(raw: bytes, context):
            return await self._route(handler, method, raw, context, passed_on, wait=False)
        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity)

    # -- while no one leads: wait a moment for the election ---------------------

    def _deferred(self, handler, method: str, passed_on: bool):
        """A write while no leader is visible (or our term is suspended):
        wait, within the caller's deadline and at most AWAIT_LEASES leases,
        for a term (an election, or our own lease confirmed again after an
        etcd hiccup), then run it here, pass it on, or refuse it."""
        async def unary(raw: bytes, context):
            return await self._route(handler, method, raw, context, passed_on, wait=True)
        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity)

    async def _route(self, handler, method: str, raw: bytes, context, passed_on: bool,
                     wait: bool) -> bytes:
        """Run here while acting, else pass on to the leader, else answer a
        read from our copy, else wait for a term once (a call that found us
        acting may find us suspended a moment later), else refuse. A call
        whose term ended before it acted goes round again, bounded by the
        caller's deadline."""
        while True:
            if wait:
                await self._await_term(context)
            now = self._clock()
            if self._term.acting(now):
                answer = await self._run_here(handler, raw, context)
                if answer is not _AGAIN:
                    return answer
                wait = True
                continue
            leader = self._term.visible_leader(now)
            if leader and leader != self._term.me and not passed_on:
                return await _forward_unary(self._leader.get(leader), method, raw, context,
                                            leader, self._term.me)
            if method in READS:
                await _stale_header(context)
                return handler.response_serializer(
                    await handler.unary_unary(_decoded(handler, raw), context))
            if not wait:
                wait = True
                continue
            await errors.abort(context, errors.host_is_slave(leader))

    async def _run_here(self, handler, raw: bytes, context):
        """The call itself, tracked; _AGAIN if its term ended before it acted."""
        request = _decoded(handler, raw)
        call = CallTerm(self._deadline(context))
        token = CALL.set(call)
        try:
            with self._tracking(context) as task:
                try:
                    response = await handler.unary_unary(request, context)
                except asyncio.CancelledError:
                    if task not in self._deposed:
                        raise
                    self._deposed.discard(task)
                    task.uncancel()
                    if not call.acted:
                        return _AGAIN
                    await errors.abort(context, errors.host_is_slave(
                        self._term.visible_leader(self._clock())))
        finally:
            CALL.reset(token)
        return handler.response_serializer(response)

    def _deadline(self, context) -> float | None:
        """When the call must be answered by, on our clock (a margin kept)."""
        remaining = context.time_remaining()
        return None if remaining is None else self._clock() + remaining - ANSWER_MARGIN

    async def _await_term(self, context) -> None:
        remaining = context.time_remaining()
        budget = AWAIT_LEASES * self._term.ttl
        if remaining is not None:
            budget = min(budget, remaining - ANSWER_MARGIN)
        end = self._clock() + budget
        while self._clock() < end:
            now = self._clock()
            leader = self._term.visible_leader(now)
            if self._term.acting(now) or (leader and leader != self._term.me):
                return
            await asyncio.sleep(0.02)

    def _on_term_end(self) -> None:
        for task in list(self._in_flight):
            self._deposed.add(task)
            task.cancel()

    def _tracked(self, behavior, streaming: bool):
        """A server-streaming call (Watch) run here: refused with HOST_IS_SLAVE
        when the term ends (the client resumes it elsewhere with its token)."""
        async def run_stream(request, context):
            with self._tracking(context) as task:
                try:
                    async for item in behavior(request, context):
                        yield item
                except asyncio.CancelledError:
                    await self._deposed_abort(task, context)
                    raise
        return run_stream

    def _tracking(self, context):
        router = self

        class _Track:
            def __enter__(self):
                self.task = asyncio.current_task()
                router._in_flight.add(self.task)
                return self.task

            def __exit__(self, *exc):
                router._in_flight.discard(self.task)
                router._deposed.discard(self.task)
        return _Track()

    async def _deposed_abort(self, task, context) -> None:
        if task in self._deposed:
            self._deposed.discard(task)
            task.uncancel()
            await errors.abort(context, errors.host_is_slave(
                self._term.visible_leader(self._clock())))

    def _refuse(self, behavior, streaming: bool):
        term = self._term

        async def run(request, context):
            await errors.abort(context, errors.host_is_slave(term.visible_leader(self._clock())))

        async def run_stream(request, context):
            await run(request, context)
            yield  # never reached: abort raises
        return run_stream if streaming else run

    # -- on a follower -------------------------------------------------------

    def _pass_on(self, handler, method: str, leader: str):
        channel, me = self._leader.get(leader), self._term.me
        if handler.response_streaming:
            async def stream(request, context):
                async for item in _forward_stream(channel, method, request, context, leader, me):
                    yield item
            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_identity, response_serializer=_identity)

        async def unary(request, context):
            return await _forward_unary(channel, method, request, context, leader, me)
        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity)


def _outgoing(context, me: str) -> list[tuple[str, str]]:
    """The caller's metadata for the leader. With TLS the caller was
    authenticated here (security/auth.py ran first): the leader is told whom
    we pass the call on for (delegation), over our master certificate, and
    the caller's own credentials stay here. A caller's own delegation header
    never passes."""
    caller = auth.CALLER.get()
    dropped = (auth.ON_BEHALF_OF, "authorization") if caller is not None else (
        auth.ON_BEHALF_OF,)
    metadata = [(k, v) for k, v in context.invocation_metadata()
                if not k.startswith(_HOP_HEADERS) and k not in dropped]
    if caller is not None:
        metadata.append(auth.on_behalf_of(caller))
    metadata.append((PASSED_ON, me))
    return metadata


async def _forward_unary(channel, method: str, raw: bytes, context, leader: str, me: str):
    call = channel.unary_unary(method, request_serializer=_identity,
                               response_deserializer=_identity)
    try:
        outbound = call(raw, timeout=context.time_remaining(), metadata=_outgoing(context, me))
        await _relay_headers(context, outbound)
        return await outbound
    except grpc.aio.AioRpcError as exc:
        await _relay(context, exc, leader)


async def _forward_stream(channel, method: str, raw: bytes, context, leader: str, me: str):
    call = channel.unary_stream(method, request_serializer=_identity,
                                response_deserializer=_identity)
    try:
        outbound = call(raw, timeout=context.time_remaining(), metadata=_outgoing(context, me))
        await _relay_headers(context, outbound)
        async for item in outbound:
            yield item
    except grpc.aio.AioRpcError as exc:
        await _relay(context, exc, leader)


async def _relay_headers(context, outbound) -> None:
    """The leader's response headers (e.g. xcp-stale), to our caller."""
    headers = [(k, v) for k, v in (await outbound.initial_metadata() or ())
               if not k.startswith(_HOP_HEADERS)]
    if headers:
        await context.send_initial_metadata(headers)


async def _relay(context, exc: grpc.aio.AioRpcError, leader: str) -> None:
    """The leader's error, as it sent it; a leader we could not reach is
    HOST_IS_SLAVE naming it, so the caller may try it directly or elsewhere."""
    if errors.XcpError.from_rpc_error(exc) is None and exc.code() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        await errors.abort(context, errors.host_is_slave(leader))
    trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()))
    await context.abort(exc.code(), exc.details() or "", trailing)


async def _stale_header(context) -> None:
    await context.send_initial_metadata(((STALE, "true"),))


def _stale(behavior, streaming: bool):
    async def run(request, context):
        await _stale_header(context)
        return await behavior(request, context)
    return run


def _rewrap(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """The same handler with its behavior wrapped by wrap(behavior, streaming)."""
    if handler.request_streaming:
        return handler
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    behavior = wrap(handler.unary_unary, False)
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)
