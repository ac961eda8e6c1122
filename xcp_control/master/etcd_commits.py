"""Group commit for the etcd store: queued commits share guarded transactions.

Every write of the leader is one etcd transaction guarded by its epoch
(`Compare(CreateRevision(leader key) == epoch)`): a deposed leader's write is
refused by etcd, never applied (ETCD-FACTS.md: plain puts of a resumed,
SIGSTOPped holder still succeed). Commits queued while transactions are in
flight share the next one, within etcd's 128 operations and 1.5 MiB per
request, one operation per key (etcd refuses a key twice in one txn). A job
touching a key of a transaction in flight waits for it, so writes of one
object keep their order; a job is answered only after etcd answered the
transaction that carried it.

A transaction costs about the same whatever its size (measured on a 3-member
etcd here: one 8-put txn 1.60 ms, one 1-put txn 1.46 ms), so few large
transactions beat many small ones. When the next one goes is `Batching`'s
rule (BENCHMARKS.md, issue 11, has the trials):

- One in flight (IN_FLIGHT): two or more made every transaction smaller and
  slower (etcd's fsyncs come one after another), not the rate higher.
- The linger: the callers a transaction answers come back with their next
  commit within a few milliseconds (the master's own CPU: ~0.4 ms per
  CreateVM, one at a time), and the first one back used to leave alone the
  moment the slot was free, the others waiting for it (transactions of 1 and
  7 commits, in turns, with 8 clients). So a free slot waits, at most LINGER
  after the oldest queued job, until as many jobs are queued as were out
  (queued or in flight) when the last two transactions left; with a lone
  caller that is one, and nothing waits.

Plain asyncio over `EtcdClient.txn`; the store (etcd_store.py) builds the
jobs and turns the answers into changes.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
SECOND_AFTER = MAX_TXN_OPS  # ops queued for one more to go while one flies (IN_FLIGHT > 1)
LINGER = 0.005  # seconds at most a free slot waits for the callers expected back
# Whether the linger counts from the slot's freeing (True) or from the oldest
# queued job's arrival (False: a job queued while the slot was busy may have
# used it up by then, and leaves alone as before). Measured within the noise
# of the rule as it is (BENCHMARKS.md, issue 11), so off.
LINGER_FROM_FREE = False
# A transaction whose outcome etcd did not tell is tried again, while we may
# act, for up to this long: writes stay unavailable for 1.3-2.7 s when etcd's
# raft leader dies (ETCD-FACTS.md), and one member lost must change nothing
# for clients. Each try has etcd_client's own short deadline.
WRITE_BUDGET = 5.0  # seconds
RETRY_PAUSE = 0.05  # seconds between tries that failed at once (no raft leader yet)
COMPACT_EVERY = 1000  # transactions between two compactions of etcd's history
COMPACT_KEEP = 100_000  # revisions of history kept (about change_log_size changes)


@dataclass(frozen=True)
class Batching:
    """When the next transaction goes out: a pure rule (`next_send`), so the
    committer's timing is tested without etcd or a clock."""

    in_flight: int = IN_FLIGHT  # transactions in flight at most
    second_after: int = SECOND_AFTER  # ops queued before one more goes while others fly
    linger: float = LINGER  # seconds an idle slot waits for callers expected back
    from_free: bool = LINGER_FROM_FREE  # the linger counts from the slot's freeing

    @classmethod
    def default(cls) -> "Batching":
        """From the module's constants as they are now (a benchmark sets them)."""
        return cls(IN_FLIGHT, SECOND_AFTER, LINGER, LINGER_FROM_FREE)

    def next_send(self, flying: int, queued_jobs: int, queued_ops: int, expected: int,
                  oldest: float, now: float, free_since: float = 0.0) -> float | None:
        """When the next transaction should go: `now` (at once), a later time
        (look again then, unless something changes first), or None (wait for
        a change: a job queued, a transaction answered).

        `flying`: transactions in flight; `queued_*`: what waits; `expected`:
        commits out lately (queued or in flight when the last transactions
        left: callers likely to come back); `oldest`: when the oldest queued
        job was queued; `free_since`: when the last transaction in flight
        answered.

        A free slot takes its share of the expected commits (all of them with
        one slot) or a full transaction's worth; short of that, with nothing in
        flight it waits for them until `linger` after the oldest was queued
        (`from_free`: or after the slot was freed, if later), with a
        transaction in flight until that one answers."""
        if queued_jobs == 0 or flying >= self.in_flight:
            return None
        share = -(-expected // self.in_flight)
        if queued_jobs >= share or queued_ops >= self.second_after:
            return now
        if flying:
            return None
        start = max(oldest, free_since) if self.from_free else oldest
        return max(now, start + self.linger)


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
    queued_at: float = 0.0
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


class GroupCommitter:
    """Sends queued jobs as few guarded transactions; `submit` answers with
    the etcd reply of the transaction that carried the job."""

    def __init__(self, client: ec.EtcdClient, guard_key: bytes, fence: Fence,
                 max_pending: int = 10_000, in_flight: int | None = None,
                 on_applied: Applied | None = None, batching: Batching | None = None,
                 clock: Callable[[], float] | None = None, ready: Ready | None = None) -> None:
        self._client = client
        self._ready = ready
        self._on_applied = on_applied  # told of each applied txn before its jobs answer
        self._guard_key = guard_key  # the leader key: its create revision is the epoch
        self._fence = fence
        batching = batching or Batching.default()
        if in_flight is not None:
            batching = dataclasses.replace(batching, in_flight=in_flight)
        self._batching = batching
        self._clock = clock  # loop.time by default (the linger's timer runs on it)
        self._outstanding = (0, 0)  # jobs out when the last two transactions went out
        self._queue: deque[Job] = deque()
        self._queued_ops = 0
        self._flying_jobs = 0
        self._free_since = 0.0  # when the last transaction in flight answered
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
            job.queued_at = self._now()
            self._queue.append(job)
            self._queued_ops += len(job.requests)
            self._wake.set()
            # Once queued, the write goes on regardless of the caller.
            return await asyncio.shield(job.future)
        finally:
            self._slots.release()

    def _next_batch(self) -> list[Job]:
        """Queued jobs for one transaction: within the limits, one op per key."""
        batch = [self._queue.popleft()]
        self._queued_ops -= len(batch[0].requests)
        ops, size, keys = len(batch[0].requests), batch[0].size, set(batch[0].keys)
        while self._queue:
            job = self._queue[0]
            if (ops + len(job.requests) > MAX_TXN_OPS or size + job.size > MAX_TXN_BYTES
                    or keys.intersection(job.keys) or len(set(job.keys)) < len(job.keys)
                    or self._flying_keys.intersection(job.keys)):
                break
            self._queue.popleft()
            batch.append(job)
            self._queued_ops -= len(job.requests)
            ops, size = ops + len(job.requests), size + job.size
            keys.update(job.keys)
        return batch

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _due(self) -> float | None:
        """How long until the next transaction goes (0: now), or None: until
        something changes."""
        if not self._queue or self._flying_keys.intersection(self._queue[0].keys):
            return None  # a write of one object waits for the one in flight
        now = self._now()
        when = self._batching.next_send(len(self._flying), len(self._queue), self._queued_ops,
                                        max(self._outstanding), self._queue[0].queued_at, now,
                                        self._free_since)
        return None if when is None else max(0.0, when - now)

    async def _send_loop(self) -> None:
        while True:
            when = self._due()
            while when == 0:
                batch = self._next_batch()
                self._outstanding = (self._outstanding[1], len(batch) + self._flying_jobs
                                     + len(self._queue))
                self._flying_jobs += len(batch)
                keys = {k for job in batch for k in job.keys}
                self._flying_keys |= keys
                task = asyncio.create_task(self._send(batch, keys))
                self._flying.add(task)
                task.add_done_callback(self._flying.discard)
                when = self._due()
            if when is None:
                await self._wake.wait()
            else:  # lingering: a new job or a freed slot wakes us sooner
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), when)
            self._wake.clear()

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
            self._flying_jobs -= len(batch)
            if not self._flying:
                self._free_since = self._now()
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
