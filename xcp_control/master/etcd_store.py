"""The pool database on etcd, for several masters with one fenced leader.

Every master holds the whole pool in a warm working copy fed by one etcd
watch over the pool's prefix (after an initial load, paged), so reads never
leave the process and a new leader serves at once: nothing is replayed at
failover.

Writes are the leader's only. Each one is an etcd transaction guarded by the
leader's epoch (`Compare(CreateRevision(leader key) == epoch)`): a deposed
leader's write is refused by etcd, never applied (ETCD-FACTS.md: plain puts
of a resumed, SIGSTOPped holder still succeed). Commits queued while a
transaction is in flight share the next one (group commit, within etcd's
128 operations and 1.5 MiB per request). A commit answers once etcd has
acknowledged its transaction (a majority has it on disk) and the watch has
brought it into the working copy, so the caller reads its own write.

Generations come from etcd revisions: change i of revision R is generation
R * PER_REVISION + i, and the store's generation after revision R is the last
slot of R. Every master derives the same generations from the same history,
so a Watch token taken on one master resumes on any other.

Keys: etcd_keys.py.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuid_module
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import grpc
from google.protobuf.message import Message

from xcp_control import errors
from xcp_control.master import etcd_client as ec
from xcp_control.master.etcd_keys import Keys
from xcp_control.master.store import (ADD, CLASS_OF_MESSAGE, CLASSES, DEL, MOD, Change, Delete,
                                      Put, Store, WorkingCopy, check_ops)

log = logging.getLogger(__name__)

PER_REVISION = 1024  # generations per etcd revision (a transaction holds <= 128 ops)
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: queued commits share a txn up to this
MAX_TXN_BYTES = 1024 * 1024  # below etcd's 1.5 MiB request limit, with room for keys
PAGE = 2000  # objects per page of the initial load
COMPACT_EVERY = 1000  # commits between two compactions of etcd's history, by the leader
COMPACT_KEEP = 100_000  # revisions of history kept (about change_log_size changes)
IN_FLIGHT = 4  # transactions in flight at once (each a group of queued commits)
WRITE_ATTEMPTS = 3  # tries of one transaction whose outcome etcd did not tell
_RECENT = 4096  # revisions whose changes are kept for commits still waiting on them

KeyListener = Callable[[bytes, bytes | None, int], None]  # key, value (None: deleted), revision
Fence = Callable[[], int]  # the epoch to guard writes with; raises HOST_IS_SLAVE if none


@dataclass
class _Job:
    ops: list[Put | Delete]
    keys: list[bytes]
    requests: list[ec.RequestOp]
    size: int
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


class EtcdStore(Store):
    """Memory for reads on every master; etcd, fenced by the epoch, for writes."""

    def __init__(self, client: ec.EtcdClient, prefix: str, fence: Fence,
                 change_log_size: int = 100_000, max_pending_writes: int = 10_000) -> None:
        self.client = client
        self.keys = Keys.of(prefix)
        self._fence = fence
        self._memory = WorkingCopy()
        self._log: deque[Change] = deque(maxlen=change_log_size)
        self._log_start = 0  # changes_since(g) is complete for g >= this
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._key_listeners: list[tuple[bytes, KeyListener]] = []
        self._revision = 0  # the last etcd revision the working copy holds
        self._reached = asyncio.Condition()
        self._recent: OrderedDict[int, dict[bytes, Change]] = OrderedDict()
        self._db_id = ""
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_pending_writes)
        self._tasks: list[asyncio.Task] = []
        self._flying: set[asyncio.Task] = set()  # transactions in flight
        self._flying_keys: set[bytes] = set()
        self._background: set[asyncio.Task] = set()  # compactions
        self.watch_ok = False  # False while the watch is down: reads may be stale
        self.commits = 0

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> "EtcdStore":
        """Load the pool (retrying until etcd answers), then follow it."""
        while True:
            try:
                self._db_id = await self._load_db_id()
                await self._load()
                break
            except grpc.RpcError as exc:
                log.warning("etcd not reachable at %s (%s); retrying", self.client.target,
                            exc.code())
                await asyncio.sleep(0.5)
        self._tasks = [asyncio.create_task(self._follow(), name="etcd-watch"),
                       asyncio.create_task(self._write_loop(), name="etcd-writer")]
        return self

    async def close(self) -> None:
        for task in [*self._tasks, *self._flying, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self._queue:
            _fail(job.future, errors.host_is_slave(""))
        await self.client.close()

    async def _load_db_id(self) -> str:
        """The pool's id, made by the first master that finds none."""
        mine = uuid_module.uuid4().hex[:12].encode()
        reply = await self.client.txn([ec.create_revision_is(self.keys.db_id, 0)],
                                      [ec.put_op(self.keys.db_id, mine)],
                                      [ec.get_op(self.keys.db_id)])
        if reply.succeeded:
            return mine.decode()
        return reply.responses[0].response_range.kvs[0].value.decode()

    async def _load(self) -> None:
        """Every object at one revision, a page at a time."""
        memory, revision, start = WorkingCopy(), 0, self.keys.objects
        end = ec.prefix_end(self.keys.objects)
        while True:
            page = await self.client.range(start, end, limit=PAGE, revision=revision,
                                           timeout=10.0)
            revision = revision or page.header.revision
            for kv in page.kvs:
                self._install(memory, kv.key, kv.value)
            if not page.more:
                break
            start = page.kvs[-1].key + b"\0"
        self._memory, self._revision = memory, revision
        self._log.clear()
        self._log_start = self.generation
        log.info("loaded the pool from etcd at revision %d", revision)

    def _install(self, memory: WorkingCopy, key: bytes, value: bytes) -> None:
        parsed = self.keys.parse_object(key)
        if parsed is not None:
            class_name, uuid = parsed
            memory.install(class_name, uuid, CLASSES[class_name].message.FromString(value))

    # -- reads (memory) -----------------------------------------------------

    @property
    def generation(self) -> int:
        return self._revision * PER_REVISION + PER_REVISION - 1

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def db_id(self) -> str:
        return self._db_id

    def get(self, class_name: str, uuid: str) -> Message | None:
        return self._memory.get(class_name, uuid)

    def list(self, class_name: str) -> list[Message]:
        return self._memory.list(class_name)

    def find(self, class_name: str, field: str, value: object) -> list[Message]:
        return self._memory.find(class_name, field, value)

    def add_listener(self, listener: Callable[[list[Change]], None]) -> None:
        self._listeners.append(listener)

    def add_key_listener(self, prefix: bytes, listener: KeyListener) -> None:
        """Call listener(key, value or None, revision) for each change of a key
        under `prefix` that is not a pool object (the leader key, masters)."""
        self._key_listeners.append((prefix, listener))

    async def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the working copy holds `revision`; False on timeout."""
        async with self._reached:
            try:
                await asyncio.wait_for(
                    self._reached.wait_for(lambda: self._revision >= revision), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    # -- history ------------------------------------------------------------

    async def changes_since(self, generation: int) -> list[Change] | None:
        if generation >= self.generation:
            return []
        if generation < self._log_start:
            return None
        return [c for c in self._log if c.generation > generation]

    # -- the watch ----------------------------------------------------------

    async def _follow(self) -> None:
        """Apply every change of the prefix, reconnecting from where it stopped."""
        while True:
            try:
                async for response in self.client.watch(self.keys.root,
                                                         ec.prefix_end(self.keys.root),
                                                         self._revision + 1):
                    self.watch_ok = True
                    if response.compact_revision:
                        await self._resync()
                        break
                    await self._take(response)
            except grpc.RpcError as exc:
                if self.watch_ok:  # once per outage
                    log.warning("etcd watch failed (%s); reconnecting", exc.code())
            self.watch_ok = False
            await asyncio.sleep(0.2)

    async def _take(self, response) -> None:
        if not response.events:
            if not response.created and response.header.revision > self._revision:
                await self._advance(response.header.revision)  # a progress notification
            return
        by_revision: dict[int, list] = {}
        for event in response.events:
            by_revision.setdefault(event.kv.mod_revision, []).append(event)
        for revision, events in by_revision.items():
            if revision > self._revision:
                self._apply_revision(revision, events)
                await self._advance(revision)

    def _apply_revision(self, revision: int, events: list) -> None:
        changes: dict[bytes, Change] = {}
        for event in events:
            kv = event.kv
            parsed = self.keys.parse_object(kv.key)
            if parsed is None:
                value = None if event.type == event.DELETE else kv.value
                for prefix, listener in self._key_listeners:
                    if kv.key.startswith(prefix):
                        listener(kv.key, value, revision)
                continue
            class_name, uuid = parsed
            message = CLASSES[class_name].message
            generation = revision * PER_REVISION + len(changes)
            if event.type == event.DELETE:
                last = message.FromString(event.prev_kv.value) if event.HasField("prev_kv") \
                    else message(uuid=uuid)
                change = Change(generation, DEL, class_name, uuid, last)
            else:
                op = ADD if kv.version == 1 else MOD
                change = Change(generation, op, class_name, uuid, message.FromString(kv.value))
            self._memory.apply(change)
            changes[kv.key] = change
        if changes:
            published = list(changes.values())
            self._log.extend(published)
            self._recent[revision] = changes
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            for listener in self._listeners:
                listener(published)

    async def _advance(self, revision: int) -> None:
        async with self._reached:
            self._revision = revision
            self._reached.notify_all()

    async def _resync(self) -> None:
        """The watch fell behind a compaction: reload, and publish the difference."""
        old = self._memory
        await self._load()
        changes = []
        for name in CLASSES:
            for obj in self._memory.list(name):
                before = old.get(name, obj.uuid)
                if before != obj:
                    changes.append(Change(self.generation, ADD if before is None else MOD,
                                          name, obj.uuid, obj))
            for obj in old.list(name):
                if self._memory.get(name, obj.uuid) is None:
                    changes.append(Change(self.generation, DEL, name, obj.uuid, obj))
        if changes:
            for listener in self._listeners:
                listener(changes)
        await self._advance(self._revision)

    # -- writes -------------------------------------------------------------

    async def commit(self, ops: Sequence[Put | Delete]) -> list[Change]:
        if not ops:
            return []
        check_ops(ops)
        self._fence()  # HOST_IS_SLAVE at once on a master that is not leading
        await self._slots.acquire()
        try:
            job = self._job(list(ops))
            self._queue.append(job)
            self._wake.set()
            # Once queued, the write goes on regardless of the caller.
            return await asyncio.shield(job.future)
        finally:
            self._slots.release()

    def _job(self, ops: list[Put | Delete]) -> _Job:
        keys, requests, size = [], [], 0
        for op in ops:
            if isinstance(op, Put):
                key = self.keys.object(CLASS_OF_MESSAGE[type(op.obj)], op.obj.uuid)
                value = op.obj.SerializeToString()
                requests.append(ec.put_op(key, value))
                size += len(key) + len(value)
            else:
                key = self.keys.object(op.class_name, op.uuid)
                requests.append(ec.delete_op(key))
                size += len(key)
            keys.append(key)
        return _Job(ops, keys, requests, size)

    def _next_batch(self) -> list[_Job]:
        """Queued jobs for one transaction: within the limits, one op per key
        (etcd refuses a key twice in one transaction)."""
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

    async def _write_loop(self) -> None:
        """Send transactions, up to IN_FLIGHT at once; a job touching a key of
        a transaction in flight waits for it, so writes of one object keep
        their order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and len(self._flying) < IN_FLIGHT \
                    and not self._flying_keys.intersection(self._queue[0].keys):
                batch = self._next_batch()
                keys = {k for job in batch for k in job.keys}
                self._flying_keys |= keys
                task = asyncio.create_task(self._send(batch, keys))
                self._flying.add(task)
                task.add_done_callback(self._flying.discard)

    async def _send(self, batch: list[_Job], keys: set[bytes]) -> None:
        try:
            results = await self._write(batch)
        except BaseException as exc:  # noqa: BLE001 - every caller hears of it
            for job in batch:
                _fail(job.future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._flying_keys -= keys
            self._wake.set()
        for job, changes in zip(batch, results):
            if not job.future.done():
                job.future.set_result(changes)

    async def _txn(self, requests: list) -> "ec.rpc.TxnResponse":
        """The guarded transaction, retried while we may still act: a request
        in flight when etcd's raft leader dies hangs until its deadline
        (ETCD-FACTS.md), and one member lost must change nothing for clients.
        Retrying is safe: the same puts and deletes give the same state."""
        for attempt in range(WRITE_ATTEMPTS):
            epoch = self._fence()
            try:
                return await self.client.txn([ec.create_revision_is(self.keys.leader, epoch)],
                                             requests)
            except grpc.RpcError as exc:
                log.warning("etcd write failed (%s), attempt %d", exc.code(), attempt + 1)
        # Unknown outcome: the caller is not told it is durable. The watch
        # brings the value in if etcd applied it after all.
        raise errors.host_is_slave("")

    async def _write(self, batch: list[_Job]) -> list[list[Change]]:
        requests = [r for job in batch for r in job.requests]
        reply = await self._txn(requests)
        if not reply.succeeded:
            log.warning("etcd refused a write of our epoch: no longer the leader")
            raise errors.host_is_slave("")
        self.commits += 1
        revision = reply.header.revision
        if self.commits % COMPACT_EVERY == 0 and revision > COMPACT_KEEP:
            self._compact(revision - COMPACT_KEEP)
        changed = any(r.HasField("response_put") or r.response_delete_range.deleted
                      for r in reply.responses)
        if changed and not await self.wait_revision(revision, timeout=5.0):
            log.warning("the etcd watch lags: revision %d acknowledged, not yet seen", revision)
        return [self._changes_of(job, revision) for job in batch]

    def _compact(self, revision: int) -> None:
        """Drop etcd's history older than `revision` (it grows without bound
        otherwise); what is kept covers a watch that reconnects after an outage,
        and one that falls further behind reloads (`_resync`)."""
        async def compact() -> None:
            try:
                await self.client.compact(revision, timeout=5.0)
            except grpc.RpcError as exc:
                log.info("etcd compaction to %d failed (%s)", revision, exc.code())
        task = asyncio.create_task(compact())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _changes_of(self, job: _Job, revision: int) -> list[Change]:
        seen = self._recent.get(revision, {})
        out = []
        for op, key in zip(job.ops, job.keys):
            change = seen.get(key)
            if change is None:  # a delete of an absent object, or the watch lags
                change = _planned(op, revision * PER_REVISION)
            out.append(change)
        return out


def _planned(op: Put | Delete, generation: int) -> Change:
    if isinstance(op, Put):
        return Change(generation, MOD, CLASS_OF_MESSAGE[type(op.obj)], op.obj.uuid, op.obj)
    return Change(generation, DEL, op.class_name, op.uuid,
                  CLASSES[op.class_name].message(uuid=op.uuid))


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
