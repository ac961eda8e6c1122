"""A thin asyncio client for etcd v3: the few calls the etcd store and the
election need, each with its own deadline.

The generated etcd messages and stubs come from the `aetcd` package (PyPI),
so no etcd proto file is copied here; aetcd's own Client is not used because
it talks to one endpoint and has one timeout for every call (ETCD-FACTS.md:
a request in flight when etcd's raft leader dies hangs until its deadline,
so each call here has a short one and its caller retries).

One grpc.aio channel serves every member: its target lists all of them
(`ipv4:A:1,B:2,...`), and gRPC's pick_first moves to the next member when
one stops answering. A member that is *frozen* (SIGSTOP: its kernel still
ACKs) is noticed by that channel only after the keepalive PING times out
(~2 s), past a 2 s lease; so lease renewals, which are idempotent, are
hedged (`renew`): one not answered within HEDGE_AFTER goes also through a
channel pinned to each member (made once, on the first hedge), and the
first answer counts, with its own send time. When a pinned channel answered
and the main one failed, the main channel is rebuilt with the member that
answered first in its target (`prefer`), so writes, which are never
hedged, follow at their next try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from xcp_control.rpc.channels import resolve

T = TypeVar("T")
log = logging.getLogger(__name__)

# Longest a single unary etcd call may take before the caller retries.
CALL_TIMEOUT = 1.0
# Keep-alive pings on the etcd channel: a member that stops answering is
# noticed within a few seconds even while a watch stream is quiet.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),  # what catches a frozen member (GRPC-FACTS.md)
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
    # No BDP probes: every answer and watch event read would cost a PING to
    # etcd and its ACK, and what etcd sends us needs no larger window.
    ("grpc.http2.bdp_probe", 0),
]

# A lease renewal not answered within this is sent also to every member
# through its pinned channel (a frozen member stalls the main one for ~2 s).
HEDGE_AFTER = 0.25
# The main channel is rebuilt at most this often (each rebuild keeps the old
# channel open until close(): a watch on it may still be live).
PREFER_EVERY = 2.0
# Own subchannels: a rebuilt channel sharing the global subchannel pool would
# find the frozen member's connection still READY and pick it again.
_OWN_SUBCHANNELS = [("grpc.use_local_subchannel_pool", 1)]

Compare = rpc.Compare
RequestOp = rpc.RequestOp


class ChannelMoved(grpc.RpcError):
    """A watch ended because the main channel was rebuilt (EtcdClient.prefer):
    reconnect, it goes on the new channel."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class EtcdUrlError(ValueError):
    """A --etcd value that is not a list of http://HOST:PORT URLs."""


def channel_target(urls: str) -> str:
    """The gRPC target for `http://h:p,http://h:p,...`: every member in one
    `ipv4:`/`ipv6:` list (names resolved once, here)."""
    addresses = []
    for url in (u.strip() for u in urls.split(",")):
        if not url:
            continue
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise EtcdUrlError(f"--etcd wants http://HOST:PORT URLs, got {url!r}")
        addresses.extend(resolve(parts.hostname, parts.port))
    if not addresses:
        raise EtcdUrlError("--etcd names no member")
    family = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    return f"{family}:" + ",".join(addresses)


def target_members(target: str) -> tuple[str, list[str]]:
    """`ipv4:A,B` -> ("ipv4", ["A", "B"])."""
    family, _, rest = target.partition(":")
    return family, rest.split(",")


def preferring(target: str, member: str) -> str:
    """The same target with `member` first, the others in their order."""
    family, members = target_members(target)
    return f"{family}:" + ",".join([member] + [m for m in members if m != member])


@dataclass(frozen=True)
class Answer:
    """The first answer of a hedged call: its value, when the request that
    got it was sent, and who sent it (-1: the main call, i: hedge i)."""

    value: object
    sent_at: float
    by: int


async def first_answer(main: Callable[[], Awaitable[T]],
                       hedges: Sequence[Callable[[], Awaitable[T]]], hedge_after: float,
                       clock: Callable[[], float],
                       main_failed: Callable[[int], None] | None = None) -> Answer:
    """`main()` now; when it has not answered within `hedge_after` seconds
    (or failed sooner), each of `hedges` too; the first answer of any
    (grpc.RpcError: the last error when every one failed). The calls still
    out then are cancelled, except the main one: when a hedge answered and
    the main call fails (then or later), `main_failed(i)` is called, i the
    hedge that answered. Only for idempotent calls (a lease renewal)."""
    sent = {}

    def start(i: int, call: Callable[[], Awaitable[T]]) -> asyncio.Task:
        sent_at = clock()
        task = asyncio.ensure_future(call())
        sent[task] = (i, sent_at)
        return task

    main_task = start(-1, main)
    main_task.add_done_callback(_retrieve)
    pending = {main_task}
    await asyncio.wait(pending, timeout=hedge_after)
    hedged = False
    error: BaseException | None = None
    try:
        while True:
            for task in [t for t in pending if t.done()]:
                pending.discard(task)
                exc = task.exception()
                if exc is None:
                    i, sent_at = sent[task]
                    if i >= 0 and main_failed is not None:
                        _watch_main(main_task, lambda: main_failed(i))
                    return Answer(task.result(), sent_at, i)
                if not isinstance(exc, grpc.RpcError):
                    raise exc
                error = exc
            if not hedged:
                hedged = True
                pending |= {start(i, call) for i, call in enumerate(hedges)}
            if not pending:
                raise error  # type: ignore[misc]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pending:
            if task is not main_task:
                task.cancel()
        if main_task in pending and main_failed is None:
            main_task.cancel()


def _retrieve(task: asyncio.Task) -> None:
    """Mark a task's exception as seen (a main call left running fails alone)."""
    if not task.cancelled():
        task.exception()


def _watch_main(main: asyncio.Task, failed: Callable[[], None]) -> None:
    def done(task: asyncio.Task) -> None:
        if not task.cancelled() and isinstance(task.exception(), grpc.RpcError):
            failed()
    if main.done():
        done(main)
    else:
        main.add_done_callback(done)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def put_op(key: bytes, value: bytes, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def get_op(key: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def create_revision_is(key: bytes, revision: int) -> rpc.Compare:
    """True while `key` exists with this create revision (0: key absent)."""
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                       create_revision=revision)


class EtcdClient:
    """The calls the store and the election make, over one channel."""

    def __init__(self, urls: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = channel_target(urls)
        self.members = target_members(self.target)[1]
        self._clock = clock
        self._connect(self.target, [])
        self._retired: list[grpc.aio.Channel] = []  # rebuilt away from (closed in close())
        self._pinned: dict[str, tuple[grpc.aio.Channel, rpc.LeaseStub]] = {}
        self._preferred_at = -PREFER_EVERY
        self._watches: set = set()  # watch calls open
        self._moved: set = set()  # those prefer() ended
        self.hedge_wins = 0  # renewals a pinned channel answered first
        self.reconnects = 0  # main channel rebuilds
        # (request kind, seconds, ok) for every unary request: the metrics histogram.
        self.observers: list[Callable[[str, float, bool], None]] = []

    def _connect(self, target: str, extra: list) -> None:
        self.channel_target = target
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS + extra)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)

    def prefer(self, member: str) -> bool:
        """Rebuild the main channel with `member` first in its target (the
        one that answered while the main channel did not); calls in flight
        finish on the old channel, new ones go on the new (its own
        subchannels: see _OWN_SUBCHANNELS). At most every PREFER_EVERY s."""
        now = self._clock()
        if now - self._preferred_at < PREFER_EVERY:
            return False
        self._preferred_at = now
        self._retired.append(self._channel)
        self._connect(preferring(self.target, member), _OWN_SUBCHANNELS)
        # Watches on the old channel end (ChannelMoved) and their callers
        # reconnect, from their revision, on the new one: left there, a watch
        # stalled for seconds, and commits waiting for it with it.
        for call in list(self._watches):
            self._moved.add(call)
            call.cancel()
        self.reconnects += 1
        log.warning("etcd channel moved to member %s first", member)
        return True

    def _pinned_lease(self, member: str) -> rpc.LeaseStub:
        if member not in self._pinned:
            family = target_members(self.target)[0]
            channel = grpc.aio.insecure_channel(f"{family}:{member}",
                                                options=_CHANNEL_OPTIONS + _OWN_SUBCHANNELS)
            self._pinned[member] = (channel, rpc.LeaseStub(channel))
        return self._pinned[member][1]

    async def _timed(self, kind: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        ok = False
        try:
            answer = await call
            ok = True
            return answer
        finally:
            for observer in self.observers:
                observer(kind, time.monotonic() - started, ok)

    async def close(self) -> None:
        for channel in [self._channel, *self._retired, *(c for c, _ in self._pinned.values())]:
            await channel.close()

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (),
                  timeout: float = CALL_TIMEOUT) -> rpc.TxnResponse:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._timed("txn", self._kv.Txn(request, timeout=timeout))

    async def range(self, key: bytes, range_end: bytes = b"", limit: int = 0,
                    revision: int = 0, timeout: float = CALL_TIMEOUT) -> rpc.RangeResponse:
        request = rpc.RangeRequest(key=key, range_end=range_end, limit=limit, revision=revision,
                                   sort_order=rpc.RangeRequest.ASCEND,
                                   sort_target=rpc.RangeRequest.KEY)
        return await self._timed("range", self._kv.Range(request, timeout=timeout))

    async def compact(self, revision: int, timeout: float = CALL_TIMEOUT) -> None:
        await self._timed("compact", self._kv.Compact(rpc.CompactionRequest(revision=revision),
                                                      timeout=timeout))

    async def grant(self, ttl: int, timeout: float = CALL_TIMEOUT) -> rpc.LeaseGrantResponse:
        return await self._timed("lease_grant", self._lease.LeaseGrant(
            rpc.LeaseGrantRequest(TTL=ttl), timeout=timeout))

    async def revoke(self, lease: int, timeout: float = CALL_TIMEOUT) -> None:
        await self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=timeout)

    async def keepalive(self, lease: int, timeout: float = CALL_TIMEOUT) -> int:
        """Renew the lease once; its remaining TTL (0: the lease is gone)."""
        return await self._timed("lease_keepalive", self._keepalive(lease, timeout))

    async def renew(self, lease: int, timeout: float = CALL_TIMEOUT,
                    hedge_after: float = HEDGE_AFTER) -> Answer:
        """Renew the lease once, hedged (first_answer): the remaining TTL (0:
        the lease is gone) and the send time of the request etcd answered.
        A pinned channel answering while the main one fails moves the main
        channel to that member (prefer)."""
        main_lease = self._lease
        answer = await self._timed("lease_keepalive", first_answer(
            lambda: self._keepalive(lease, timeout, main_lease),
            [lambda m=m: self._keepalive(lease, timeout, self._pinned_lease(m))
             for m in self.members],
            hedge_after, self._clock,
            main_failed=lambda i: self._main_failed(main_lease, self.members[i])))
        if answer.by >= 0:
            self.hedge_wins += 1
        return answer

    def _main_failed(self, lease_stub: rpc.LeaseStub, winner: str) -> None:
        """A hedged renewal was answered by `winner`, the main channel's failed."""
        if lease_stub is self._lease:  # not rebuilt meanwhile
            self.prefer(winner)

    async def _keepalive(self, lease: int, timeout: float,
                         stub: rpc.LeaseStub | None = None) -> int:
        stub = self._lease if stub is None else stub
        call = stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                                   timeout=timeout)
        async for reply in call:
            return reply.TTL
        return 0

    async def watch(self, key: bytes, range_end: bytes, start_revision: int,
                    prev_kv: bool = False) -> AsyncIterator[rpc.WatchResponse]:
        """Watch responses from `start_revision` on, until the stream fails
        (grpc.RpcError) or the caller stops iterating. Progress notifications
        are asked for, so a quiet watch still shows the revision it reached.
        No prev_kv unless asked: it costs etcd a read per event and watcher
        (the store takes a deleted value from its working copy)."""
        create = rpc.WatchCreateRequest(key=key, range_end=range_end,
                                        start_revision=start_revision, prev_kv=prev_kv,
                                        progress_notify=True)

        async def requests():
            yield rpc.WatchRequest(create_request=create)
            await _forever()

        call = self._watch.Watch(requests())
        self._watches.add(call)
        try:
            async for response in call:
                yield response
        except asyncio.CancelledError:
            if call in self._moved:  # prefer() ended it: the caller reconnects
                raise ChannelMoved() from None
            raise
        finally:
            self._watches.discard(call)
            self._moved.discard(call)
            call.cancel()


async def _forever() -> None:
    await asyncio.Event().wait()
