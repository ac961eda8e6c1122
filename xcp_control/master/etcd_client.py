"""A thin asyncio client for etcd v3: the few calls the etcd store and the
election need, each with its own deadline.

The generated etcd messages and stubs come from the `aetcd` package (PyPI),
so no etcd proto file is copied here; aetcd's own Client is not used because
it talks to one endpoint and has one timeout for every call (ETCD-FACTS.md:
a request in flight when etcd's raft leader dies hangs until its deadline,
so each call here has a short one and its caller retries).

One grpc.aio channel serves every member: its target lists all of them
(`ipv4:A:1,B:2,...`), and gRPC's pick_first moves to the next member when
one stops answering.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from xcp_control.rpc.channels import resolve

T = TypeVar("T")

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

Compare = rpc.Compare
RequestOp = rpc.RequestOp


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

    def __init__(self, urls: str) -> None:
        self.target = channel_target(urls)
        self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        # (request kind, seconds, ok) for every unary request: the metrics histogram.
        self.observers: list[Callable[[str, float, bool], None]] = []

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
        await self._channel.close()

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

    async def _keepalive(self, lease: int, timeout: float) -> int:
        call = self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                                          timeout=timeout)
        async for reply in call:
            return reply.TTL
        return 0

    async def watch(self, key: bytes, range_end: bytes, start_revision: int,
                    prev_kv: bool = True) -> AsyncIterator[rpc.WatchResponse]:
        """Watch responses from `start_revision` on, until the stream fails
        (grpc.RpcError) or the caller stops iterating. Progress notifications
        are asked for, so a quiet watch still shows the revision it reached."""
        create = rpc.WatchCreateRequest(key=key, range_end=range_end,
                                        start_revision=start_revision, prev_kv=prev_kv,
                                        progress_notify=True)

        async def requests():
            yield rpc.WatchRequest(create_request=create)
            await _forever()

        call = self._watch.Watch(requests())
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()


async def _forever() -> None:
    await asyncio.Event().wait()
