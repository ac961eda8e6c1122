"""Group commit for the etcd store: queued commits share guarded transactions.

Every write of the leader is one etcd transaction guarded by its epoch
(`Compare(CreateRevision(leader key) == epoch)`): a deposed leader's write is
refused by etcd, never applied (ETCD-FACTS.md: plain puts of a resumed,
SIGSTOPped holder still succeed). Commits queued while transactions are in
flight share the next one, within etcd's 128 operations and 1.5 MiB per
request, one operation per key (etcd refuses a key twice in one txn).

A transaction costs about the same whatever its size (measured on a 3-member
etcd here: one 8-put txn 1.60 ms, one 1-put txn 1.46 ms), so few large
transactions beat many small ones: one at a time (8 clients: 1,019 CreateVM/s
against 644-709/s with two in flight and 550-629/s with four), each carrying
every commit queued while the previous one was out; the slot is free again
as soon as etcd answers. A job touching a key of a transaction
in flight waits for it, so writes of one object keep their order.

Plain asyncio over `EtcdClient.txn`; the store (etcd_store.py) builds the
jobs and turns the answers into changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc

from xcp_control import errors
from xcp_control.master import etcd_client as ec

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: queued commits share a txn up to this
MAX_TXN_BYTES = 1024 * 1024  # below etcd's 1.5 MiB request limit, with room for keys
IN_FLIGHT = 1  # transactions in flight at once: 1 measured best (BENCHMARKS.md, issue 11)
# A transaction whose outcome etcd did not tell is tried again, while we may
# act, for up to this long: writes stay unavailable for 1.3-2.7 s when etcd's
# raft leader dies (ETCD-FACTS.md), and one member lost must change nothing
# for clients. Each try has etcd_client's own short deadline.
WRITE_BUDGET = 5.0  # seconds
RETRY_PAUSE = 0.05  # seconds between tries that failed at once (no raft leader yet)
COMPACT_EVERY = 1000  # transactions between two compactions of etcd's history
COMPACT_KEEP = 100_000  # revisions of history kept (about change_log_size changes)

Fence = Callable[[], int]  # the epoch to guard writes with; raises HOST_IS_SLAVE if none
# The same, waiting up to N seconds (None: the API caller's own deadline) while
# the leader's term is suspended (leadership.Gate.ready).
Ready = Callable[[float | None], Awaitable[int]]
Applied = Callable[["ec.rpc.TxnResponse", list["Job"]], None]  # reply, the jobs it carried


@dataclass
class Job:
    """One commit: its etcd operations, the keys they touch, their size, and
    what the store makes of them (`ops`, opaque here)."""

    keys: list[bytes]
    requests: list[ec.RequestOp]
    size: int
    ops: list = field(default_factory=list)
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


class GroupCommitter:
    """Sends queued jobs as few guarded transactions; `submit` answers with
    the etcd reply of the transaction that carried the job."""

    def __init__(self, client: ec.EtcdClient, guard_key: bytes, fence: Fence,
                 max_pending: int = 10_000, in_flight: int = IN_FLIGHT,
                 on_applied: Applied | None = None, ready: Ready | None = None) -> None:
        self._client = client
        self._ready = ready
        self._on_applied = on_applied  # told of each applied txn before its jobs answer
        self._guard_key = guard_key  # the leader key: its create revision is the epoch
        self._fence = fence
        self._in_flight = in_flight
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_pending)
        self._loop: asyncio.Task | None = None
        self._flying: set[asyncio.Task] = set()  # transactions in flight
        self._flying_keys: set[bytes] = set()
        self._background: set[asyncio.Task] = set()  # compactions
        self.commits = 0  # transactions etcd applied
        self.batched = 0  # jobs they carried
        self.recovered = 0  # retries that found their first attempt applied (not redone)
        # For retries after an unknown outcome (_retry): the highest revision
        # etcd answered us with, transactions sent so far, and the keys of
        # those whose outcome stayed unknown (key -> transactions sent by the
        # time we gave up on it), until one sent after that succeeds.
        self._high = 0
        self._sent = 0
        self._doubt: dict[bytes, int] = {}

    def start(self) -> None:
        self._loop = asyncio.create_task(self._send_loop(), name="etcd-writer")

    async def close(self) -> None:
        tasks = [t for t in (self._loop, *self._flying, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self._queue:
            _fail(job.future, errors.host_is_slave(""))
        self._queue.clear()

    async def submit(self, job: Job) -> "ec.rpc.TxnResponse":
        """Queue the job; the reply once etcd applied it (a majority has it on
        disk). HOST_IS_SLAVE on a master that may not write (after waiting,
        within the caller's deadline, while its term is suspended), or when
        etcd refused our epoch or did not tell."""
        await self._epoch(None)
        await self._slots.acquire()
        try:
            self._queue.append(job)
            self._wake.set()
            # Once queued, the write goes on regardless of the caller.
            return await asyncio.shield(job.future)
        finally:
            self._slots.release()

    def _next_batch(self) -> list[Job]:
        """Queued jobs for one transaction: within the limits, one op per key."""
        batch = [self._queue.popleft()]
        ops, size, keys = len(batch[0].requests), batch[0].size, set(batch[0].keys)
        while self._queue:
            job = self._queue[0]
            if (ops + len(job.requests) > MAX_TXN_OPS or size + job.size > MAX_TXN_BYTES
                    or keys.intersection(job.keys) or len(set(job.keys)) < len(job.keys)
                    or self._flying_keys.intersection(job.keys)):
                break
            self._queue.popleft()
            batch.append(job)
            ops, size = ops + len(job.requests), size + job.size
            keys.update(job.keys)
        return batch

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and len(self._flying) < self._in_flight \
                    and not self._flying_keys.intersection(self._queue[0].keys):
                batch = self._next_batch()
                keys = {k for job in batch for k in job.keys}
                self._flying_keys |= keys
                task = asyncio.create_task(self._send(batch, keys))
                self._flying.add(task)
                task.add_done_callback(self._flying.discard)

    async def _send(self, batch: list[Job], keys: set[bytes]) -> None:
        try:
            reply = await self._txn([r for job in batch for r in job.requests])
            if not reply.succeeded:
                log.warning("etcd refused a write of our epoch: no longer the leader")
                raise errors.host_is_slave("")
        except BaseException as exc:  # noqa: BLE001 - every caller hears of it
            for job in batch:
                _fail(job.future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            # Free the slot here, not in a done callback: the send loop, woken
            # next, must see it free (else, one slot, it would wait for good).
            self._flying.discard(asyncio.current_task())
            self._flying_keys -= keys
            self._wake.set()
        self.commits += 1
        self.batched += len(batch)
        if self.commits % COMPACT_EVERY == 0 and reply.header.revision > COMPACT_KEEP:
            self._compact(reply.header.revision - COMPACT_KEEP)
        if self._on_applied is not None:
            self._on_applied(reply, batch)
        for job in batch:
            if not job.future.done():
                job.future.set_result(reply)

    async def _epoch(self, budget: float | None) -> int:
        return self._fence() if self._ready is None else await self._ready(budget)

    async def _txn(self, requests: list) -> "ec.rpc.TxnResponse":
        """The guarded transaction, retried while we may still act and within
        WRITE_BUDGET: a request in flight when etcd's raft leader dies hangs
        until its deadline, and the next ones fail at once until a new raft
        leader is elected (ETCD-FACTS.md). While our term is suspended (the
        lease not confirmed meanwhile) the retry waits for it, within the
        budget, and goes on with the same epoch only: a term that ended, or a
        new one, fails the write. A retry after an attempt etcd did not
        answer is applied only if that attempt was not (`_retry`)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + WRITE_BUDGET
        self._sent += 1
        number = self._sent
        puts = [r.request_put for r in requests if r.HasField("request_put")]
        # One of our puts whose key no unanswered transaction touched: it tells
        # whether an unanswered attempt of this one was applied.
        probe = next((put for put in puts if put.key not in self._doubt), None)
        epoch = base = 0
        attempt, unsure = 0, False
        try:
            while True:
                now_epoch = await self._epoch(max(end - loop.time(), 0.0))
                if attempt and now_epoch != epoch:
                    break  # another term (even ours): the write belonged to the last one
                epoch = now_epoch
                if not attempt:
                    # Every key's last write is at most this: ours were answered,
                    # an earlier leader's came before our epoch began.
                    base = max(self._high, epoch)
                attempt += 1
                started = loop.time()
                guard = ec.create_revision_is(self._guard_key, epoch)
                try:
                    if unsure and probe is not None:
                        reply = await self._retry(guard, epoch, probe, base, requests)
                    else:
                        reply = await self._client.txn([guard], requests)
                except grpc.RpcError as exc:
                    unsure = True  # it may have been applied all the same
                    log.warning("etcd write failed (%s), attempt %d", exc.code(), attempt)
                else:
                    if reply.succeeded:
                        self._high = max(self._high, reply.header.revision)
                        # Unanswered ones that ended before this one began were
                        # applied before it if at all: their keys are plain again.
                        self._doubt = {k: n for k, n in self._doubt.items() if n >= number}
                        unsure = False
                    return reply  # refused: another term (an unanswered try stays unsure)
                if loop.time() >= end:
                    break
                if loop.time() - started < RETRY_PAUSE:
                    await asyncio.sleep(RETRY_PAUSE)  # refused at once: not a hot loop
        finally:
            if unsure:  # given up on (or cancelled) with its outcome unknown
                for key in {r.request_put.key if r.HasField("request_put")
                            else r.request_delete_range.key for r in requests}:
                    self._doubt[key] = self._sent  # marked before those numbered above
        # Unknown outcome: the caller is not told it is durable. The watch
        # brings the value in if etcd applied it after all.
        raise errors.host_is_slave("")

    async def _retry(self, guard, epoch: int, probe, base: int,
                     requests: list) -> "ec.rpc.TxnResponse":
        """A retry after an unanswered attempt: applied only while the probe
        key (one of our puts) was last written no later than `base` (no later
        than the revision etcd last answered us before the first attempt), so
        that nothing is applied twice (no second revision, no second event).
        Otherwise the first attempt was applied: its revision, as if etcd had
        answered it then."""
        unchanged = ec.Compare(key=probe.key, result=ec.Compare.LESS, target=ec.Compare.MOD,
                               mod_revision=base + 1)
        reply = await self._client.txn([guard, unchanged], requests,
                                       [ec.get_op(self._guard_key), ec.get_op(probe.key)])
        if reply.succeeded:
            return reply
        leader = reply.responses[0].response_range.kvs
        if not leader or leader[0].create_revision != epoch:
            return reply  # refused: another term
        kv = reply.responses[1].response_range.kvs[0]
        if kv.value != probe.value:  # not ours: tell nothing we do not know
            log.error("etcd key %r changed under a write in flight", probe.key)
            raise errors.host_is_slave("")
        self.recovered += 1
        log.info("an unanswered etcd write had been applied at revision %d", kv.mod_revision)
        return ec.rpc.TxnResponse(
            header=ec.rpc.ResponseHeader(revision=kv.mod_revision), succeeded=True,
            responses=[ec.rpc.ResponseOp(response_put=ec.rpc.PutResponse())
                       if r.HasField("request_put") else
                       ec.rpc.ResponseOp(response_delete_range=ec.rpc.DeleteRangeResponse())
                       for r in requests])

    def _compact(self, revision: int) -> None:
        """Drop etcd's history older than `revision` (it grows without bound
        otherwise); what is kept covers a watch that reconnects after an outage,
        and one that falls further behind reloads (the store's resync)."""
        async def compact() -> None:
            try:
                await self._client.compact(revision, timeout=5.0)
            except grpc.RpcError as exc:
                log.info("etcd compaction to %d failed (%s)", revision, exc.code())
        task = asyncio.create_task(compact())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
