"""The embedded pool database: the working copy in memory, durable in SQLite.

Like xapi's database, the working copy lives in memory on the master (reads
never touch the disk) and every change is written through to disk before the
call that made it answers. The store is generic over the datamodel messages:
a class is a name, a message type and the fields it is indexed by, so adding
an object type needs no new SQL.

Writes go through one writer thread with group commit: the event loop hands a
batch of puts and deletes to the thread and awaits its future; the thread
commits every batch waiting in one SQLite transaction (WAL, synchronous=FULL),
so a burst of writes costs one fsync, and a slow disk delays only the callers
waiting for their own writes, never the heartbeat path.

Objects handed out by get/list/find are shared: treat them as read-only and
`copy()` before changing one.

The interface (get, list, find, commit, changes_since) is what a replicated
backend (etcd) would implement too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid as uuid_module
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from google.protobuf.message import Message

from xcp_control.master.store import (ADD, CLASS_OF_MESSAGE, CLASSES, DEL, MOD, Change, Delete,
                                      MemoryBackedStore, Put, WorkingCopy)
from xcp_control.model import copy

log = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    class TEXT NOT NULL, uuid TEXT NOT NULL, generation INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (class, uuid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    generation INTEGER PRIMARY KEY, op TEXT NOT NULL, class TEXT NOT NULL,
    uuid TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before its caller is answered, power loss included.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


@dataclass
class _Job:
    changes: list[Change]
    future: asyncio.Future


_STOP = object()

CommitObserver = Callable[[float, int], None]


class _Writer(threading.Thread):
    """The one thread that writes to SQLite, committing whatever is queued as
    one transaction (group commit)."""

    MAX_BATCH = 1024

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop,
                 on_done: Callable[[list[_Job], BaseException | None], None],
                 change_log_size: int,
                 observers: Sequence[CommitObserver] = ()) -> None:
        super().__init__(name="store-writer", daemon=True)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._conn, self._loop, self._on_done = conn, loop, on_done
        self._observers = observers
        self._change_log_size = change_log_size
        self._commits = 0

    def run(self) -> None:
        while (batch := self._next_batch()) is not None:
            error = self._write(batch)
            self._loop.call_soon_threadsafe(self._on_done, batch, error)
        self._conn.close()

    def _next_batch(self) -> list[_Job] | None:
        first = self.jobs.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < self.MAX_BATCH:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self.jobs.put(_STOP)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _write(self, batch: list[_Job]) -> BaseException | None:
        changes = [c for job in batch for c in job.changes]
        try:
            started = time.monotonic()
            self._conn.execute("BEGIN IMMEDIATE")
            self._apply(changes)
            self._commits += 1
            if self._commits % 256 == 0:
                self._prune(changes[-1].generation)
            self._conn.execute("COMMIT")
            for observe in self._observers:
                observe(time.monotonic() - started, len(changes))
            return None
        except Exception as exc:  # noqa: BLE001 - reported to every waiting caller
            log.exception("store commit failed")
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            return exc

    def _apply(self, changes: list[Change]) -> None:
        rows = [(c.generation, c.op, c.class_name, c.uuid, c.obj.SerializeToString())
                for c in changes]
        self._conn.executemany(
            "INSERT INTO changes (generation, op, class, uuid, data) VALUES (?,?,?,?,?)", rows)
        for generation, op, class_name, uuid, data in rows:
            if op == DEL:
                self._conn.execute("DELETE FROM objects WHERE class=? AND uuid=?",
                                   (class_name, uuid))
            else:
                self._conn.execute(
                    "INSERT OR REPLACE INTO objects (class, uuid, generation, data) "
                    "VALUES (?,?,?,?)", (class_name, uuid, generation, data))

    def _prune(self, newest: int) -> None:
        self._conn.execute("DELETE FROM changes WHERE generation <= ?",
                           (newest - self._change_log_size,))


class SqliteStore(MemoryBackedStore):
    """The embedded default: memory for reads, SQLite (WAL) for durability."""

    def __init__(self, path: str, change_log_size: int = 100_000,
                 max_pending_writes: int = 10_000) -> None:
        self._path = path
        self._change_log_size = change_log_size
        self._memory = WorkingCopy()
        # Values of objects with writes in flight, to tell ADD from MOD correctly
        # when writes to one object overlap.
        self._pending: dict[tuple[str, str], tuple[int, Message | None]] = {}
        self._listeners: list[Callable[[list[Change]], None]] = []
        self._generation = 0
        self._next_generation = 1
        self._db_id = ""
        self._writer: _Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._slots = asyncio.Semaphore(max_pending_writes)
        self._commit_observers: list[CommitObserver] = []

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> "SqliteStore":
        """Create or load the database file, then start the writer."""
        conn = await asyncio.to_thread(self._load)
        self._reader = _connect(self._path)
        self._writer = _Writer(conn, asyncio.get_running_loop(), self._on_committed,
                               self._change_log_size, self._commit_observers)
        self._writer.start()
        return self

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call observer(seconds, changes) after each transaction, on the writer
        thread (so it must be thread-safe): a commit's duration and batch size."""
        self._commit_observers.append(observer)

    async def close(self) -> None:
        """Finish every queued write, then stop the writer."""
        if self._writer is not None:
            self._writer.jobs.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _load(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, exist_ok=True)
        conn = _connect(self._path)
        conn.executescript(_SCHEMA)
        self._db_id = self._load_db_id(conn)
        for class_name, data in conn.execute("SELECT class, data FROM objects"):
            spec = CLASSES.get(class_name)
            if spec is None:
                log.warning("ignoring objects of unknown class %r", class_name)
                continue
            obj = spec.message.FromString(data)
            self._memory.install(class_name, obj.uuid, obj)
        (newest,) = conn.execute(
            "SELECT max(COALESCE((SELECT max(generation) FROM changes), 0),"
            " COALESCE((SELECT max(generation) FROM objects), 0))").fetchone()
        self._generation = newest
        self._next_generation = newest + 1
        return conn

    @staticmethod
    def _load_db_id(conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key='db_id'").fetchone()
        if row:
            return row[0]
        db_id = uuid_module.uuid4().hex[:12]
        conn.execute("INSERT INTO meta (key, value) VALUES ('db_id', ?)", (db_id,))
        return db_id

    # -- reads (memory) -----------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation


    # -- writes -------------------------------------------------------------

    async def commit(self, ops: Sequence[Put | Delete]) -> list[Change]:
        if not ops:
            return []
        ops = self.prepared(ops)
        await self._slots.acquire()
        try:
            changes = [self._plan(op) for op in ops]
            future = asyncio.get_running_loop().create_future()
            assert self._writer is not None, "store is not open"
            self._writer.jobs.put(_Job(changes, future))
            await asyncio.shield(future)  # once queued, the write goes on regardless
            return changes
        finally:
            self._slots.release()

    def _plan(self, op: Put | Delete) -> Change:
        generation = self._next_generation
        self._next_generation += 1
        if isinstance(op, Put):
            class_name = CLASS_OF_MESSAGE[type(op.obj)]
            key = (class_name, op.obj.uuid)
            kind = ADD if self._current(key) is None else MOD
            obj = copy(op.obj)
            self._pending[key] = (generation, obj)
            return Change(generation, kind, class_name, op.obj.uuid, obj)
        key = (op.class_name, op.uuid)
        last = self._current(key) or CLASSES[op.class_name].message(uuid=op.uuid)
        self._pending[key] = (generation, None)
        return Change(generation, DEL, op.class_name, op.uuid, last)

    def _current(self, key: tuple[str, str]) -> Message | None:
        if key in self._pending:
            return self._pending[key][1]
        return self._memory.get(*key)

    def _on_committed(self, batch: list[_Job], error: BaseException | None) -> None:
        """On the loop, in commit order: apply to memory, resolve, publish."""
        committed: list[Change] = []
        for job in batch:
            for change in job.changes:
                self._settle_pending(change)
                if error is None:
                    self._memory.apply(change)
            if error is None:
                committed.extend(job.changes)
                self._generation = job.changes[-1].generation
                _resolve(job.future, None)
            else:
                _resolve(job.future, error)
        if committed:
            for listener in self._listeners:
                listener(committed)

    def _settle_pending(self, change: Change) -> None:
        key = (change.class_name, change.uuid)
        pending = self._pending.get(key)
        if pending is not None and pending[0] == change.generation:
            del self._pending[key]


    # -- history ------------------------------------------------------------

    async def changes_since(self, generation: int) -> list[Change] | None:
        if generation >= self._generation:
            return []
        return await asyncio.to_thread(self._read_changes, generation)

    def _read_changes(self, generation: int) -> list[Change] | None:
        assert self._reader is not None, "store is not open"
        with self._reader_lock:
            (oldest,) = self._reader.execute("SELECT min(generation) FROM changes").fetchone()
            if oldest is None or oldest > generation + 1:
                return None
            rows = self._reader.execute(
                "SELECT generation, op, class, uuid, data FROM changes WHERE generation > ? "
                "ORDER BY generation", (generation,)).fetchall()
        return list(_decode_changes(rows))


def _decode_changes(rows: Iterable[tuple]) -> Iterable[Change]:
    for generation, op, class_name, uuid, data in rows:
        spec = CLASSES.get(class_name)
        if spec is not None:
            yield Change(generation, op, class_name, uuid, spec.message.FromString(data))


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
