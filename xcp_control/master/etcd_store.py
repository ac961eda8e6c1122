"""The pool database on etcd, for several masters with one fenced leader.

Every master holds the whole pool in a warm working copy fed by one etcd
watch over the pool's prefix (after an initial load, paged), so reads never
leave the process and a new leader serves at once: nothing is replayed at
failover.

Writes are the leader's only, as etcd transactions guarded by its epoch and
shared by the commits queued meanwhile (group commit: etcd_commits.py). A
commit answers once etcd has acknowledged its transaction (a majority has it
on disk) and the working copy holds it, so the caller reads its own write.
The leader does not wait for the watch to bring its own transaction back:
when etcd's answer names the revision right after the one the working copy
holds, that revision is exactly the transaction's operations, and they are
applied at once, as the watch would have (same changes, same generations);
the watch's copy of that revision is then skipped. Otherwise (another write
came in between, not yet seen) the commit waits for the watch.

The watch asks for no prev_kv (etcd would read the old value of every
changed key for every watcher): a deleted object's last value is the one the
working copy holds, which is the revision before, since the watch applies
revisions in order.

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
from typing import Callable, Sequence

import grpc

from xcp_control.master import etcd_client as ec
from xcp_control.master.etcd_commits import Fence, GroupCommitter, Job, Ready
from xcp_control.master.etcd_keys import Keys
from xcp_control.model import copy
from xcp_control.master.store import (ADD, CLASS_OF_MESSAGE, CLASSES, DEL, MOD, Change, Delete,
                                      MemoryBackedStore, Put, WorkingCopy)

log = logging.getLogger(__name__)

PER_REVISION = 1024  # generations per etcd revision (a transaction holds <= 128 ops)
PAGE = 2000  # objects per page of the initial load
_RECENT = 4096  # revisions whose changes are kept for commits still waiting on them

KeyListener = Callable[[bytes, bytes | None, int], None]  # key, value (None: deleted), revision


class EtcdStore(MemoryBackedStore):
    """Memory for reads on every master; etcd, fenced by the epoch, for writes."""

    def __init__(self, client: ec.EtcdClient, prefix: str, fence: Fence,
                 change_log_size: int = 100_000, max_pending_writes: int = 10_000,
                 ready: Ready | None = None) -> None:
        self.client = client
        self.keys = Keys.of(prefix)
        self._memory = WorkingCopy()
        self._log: deque[Change] = deque(maxlen=change_log_size)
        self._log_start = 0  # changes_since(g) is complete for g >= this
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._key_listeners: list[tuple[bytes, KeyListener]] = []
        self._revision = 0  # the last etcd revision the working copy holds
        self._moved = asyncio.Event()  # set (and replaced) whenever _revision moves
        self._recent: OrderedDict[int, dict[bytes, Change]] = OrderedDict()
        self._db_id = ""
        self._writer = GroupCommitter(client, self.keys.leader, fence, max_pending_writes,
                                      on_applied=self._applied, ready=ready)
        self._tasks: list[asyncio.Task] = []
        self.watch_ok = False  # False while the watch is down: reads may be stale
        self.applied_at_once = 0  # our transactions applied from etcd's answer, not the watch

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
        self._tasks = [asyncio.create_task(self._follow(), name="etcd-watch")]
        self._writer.start()
        return self

    @property
    def commits(self) -> int:
        """etcd transactions this store had applied (each one group of commits)."""
        return self._writer.commits

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._writer.close()
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

    def add_key_listener(self, prefix: bytes, listener: KeyListener) -> None:
        """Call listener(key, value or None, revision) for each change of a key
        under `prefix` that is not a pool object (the leader key, masters)."""
        self._key_listeners.append((prefix, listener))

    async def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the working copy holds `revision`; False on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._revision < revision:
            left = end - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._moved.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

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
                self._advance(response.header.revision)  # a progress notification
            return
        by_revision: dict[int, list] = {}
        for event in response.events:
            by_revision.setdefault(event.kv.mod_revision, []).append(event)
        for revision, events in by_revision.items():
            if revision > self._revision:  # else: our own, applied when etcd answered
                self._publish(revision, self._changes_of_events(revision, events))
                self._advance(revision)

    def _changes_of_events(self, revision: int, events: list) -> dict[bytes, Change]:
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
                # The value before: the working copy holds revision - 1 (the
                # watch asks for no prev_kv, which costs etcd a read per event
                # and watcher).
                last = self._memory.get(class_name, uuid)
                if last is None:
                    last = message(uuid=uuid)
                change = Change(generation, DEL, class_name, uuid, last)
            else:
                op = ADD if kv.version == 1 else MOD
                change = Change(generation, op, class_name, uuid, message.FromString(kv.value))
            changes[kv.key] = change
        return changes

    def _changes_of_ops(self, revision: int, keys: list[bytes],
                        ops: list[Put | Delete]) -> dict[bytes, Change]:
        """The changes etcd made at `revision` for our transaction of `ops`,
        as its watch events would give them (in order; a delete of an absent
        object none), told by the working copy as of the revision before."""
        changes: dict[bytes, Change] = {}
        for key, op in zip(keys, ops):
            generation = revision * PER_REVISION + len(changes)
            if isinstance(op, Put):
                class_name = CLASS_OF_MESSAGE[type(op.obj)]
                before = self._memory.get(class_name, op.obj.uuid)
                # A copy: the caller's message may change after the commit.
                changes[key] = Change(generation, ADD if before is None else MOD, class_name,
                                      op.obj.uuid, copy(op.obj))
            else:
                last = self._memory.get(op.class_name, op.uuid)
                if last is not None:
                    changes[key] = Change(generation, DEL, op.class_name, op.uuid, last)
        return changes

    def _publish(self, revision: int, changes: dict[bytes, Change]) -> None:
        for change in changes.values():
            self._memory.apply(change)
        if changes:
            published = list(changes.values())
            self._log.extend(published)
            self._recent[revision] = changes
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            for listener in self._listeners:
                listener(published)

    def _advance(self, revision: int) -> None:
        """The working copy now holds `revision`: wake whoever waits for it.
        Synchronous, so that no other task sees the changes without the
        revision (the watch would apply them twice)."""
        self._revision = revision
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

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
        self._advance(self._revision)

    # -- writes -------------------------------------------------------------

    async def commit(self, ops: Sequence[Put | Delete]) -> list[Change]:
        if not ops:
            return []
        ops = self.prepared(ops)
        job = self._job(ops)
        reply = await self._writer.submit(job)  # HOST_IS_SLAVE unless we may write
        revision = reply.header.revision
        if _changed(reply) and not await self.wait_revision(revision, timeout=5.0):
            log.warning("the etcd watch lags: revision %d acknowledged, not yet seen", revision)
        return self._changes_of(ops, job, revision)

    def _job(self, ops: Sequence[Put | Delete]) -> Job:
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
        return Job(keys, requests, size, list(ops))

    def _applied(self, reply, batch: list[Job]) -> None:
        """etcd applied our transaction of `batch` (the committer tells us
        before it answers the commits): apply it to the working copy now if it
        is the very next revision, else leave it to the watch."""
        revision = reply.header.revision
        if revision != self._revision + 1 or not _changed(reply):
            return  # seen already, or a write of others in between, or a no-op
        keys = [k for job in batch for k in job.keys]
        ops = [op for job in batch for op in job.ops]
        self._publish(revision, self._changes_of_ops(revision, keys, ops))
        self._advance(revision)
        self.applied_at_once += 1

    def _changes_of(self, ops: Sequence[Put | Delete], job: Job,
                    revision: int) -> list[Change]:
        seen = self._recent.get(revision, {})
        out = []
        for op, key in zip(ops, job.keys):
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



def _changed(reply) -> bool:
    """Whether a transaction changed anything (else etcd made no revision)."""
    return any(r.HasField("response_put") or r.response_delete_range.deleted
               for r in reply.responses)
