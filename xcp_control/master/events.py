"""Watch: the pool database as a stream of changes, as xapi's event.from.

Each watcher has a bounded queue. Publishing never waits: a watcher whose
queue is full is cut off with EVENTS_LOST and must watch again from a
snapshot, so a slow watcher can neither slow the master nor grow its memory
without bound. Tokens name the database and a generation, so a client can
resume after a disconnect without missing or repeating a change.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Iterable

from xcp_control import errors
from xcp_control.master.store import ADD, CLASSES, Change, Store


@dataclass(frozen=True)
class Sync:
    """Marks the end of the snapshot or replay: live changes follow."""

    generation: int


_LOST = object()


class Subscription:
    """One watcher's queue of committed changes."""

    def __init__(self, classes: frozenset[str], size: int) -> None:
        self.classes = classes
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=size)
        self.lost = False

    def offer(self, change: Change) -> None:
        if self.lost or change.class_name not in self.classes:
            return
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self._cut_off()

    def _cut_off(self) -> None:
        # Drop what is queued (the watcher must resync anyway) to free memory
        # at once and make room for the marker.
        self.lost = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_LOST)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def next(self) -> Change | None:
        """The next change, or None once this watcher fell behind."""
        item = await self._queue.get()
        return None if item is _LOST else item


class EventHub:
    """Fans committed changes out to watchers (`publish` is a store listener)."""

    def __init__(self, store: Store, queue_size: int) -> None:
        self._store = store
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self.events_lost = 0  # watchers answered EVENTS_LOST (cut off, or a stale token)

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)

    def queue_depths(self) -> list[int]:
        """Changes waiting in each watcher's queue (read at scrape time)."""
        return [sub.depth for sub in self._subscriptions]

    def publish(self, changes: list[Change]) -> None:
        for sub in self._subscriptions:
            for change in changes:
                sub.offer(change)

    async def watch(self, classes: Iterable[str], token: str) -> AsyncIterator[Change | Sync]:
        """Snapshot (empty token) or replay after `token`, a Sync, then live changes."""
        wanted = parse_classes(classes)
        sub = Subscription(wanted, self._queue_size)
        self._subscriptions.add(sub)  # before reading, so no change falls in between
        try:
            if token:
                backlog, last = await self._replay(wanted, token)
            else:
                backlog, last = self._snapshot(wanted)
            for item in backlog:
                yield item
            yield Sync(last)
            while (change := await sub.next()) is not None:
                if change.generation > last:
                    last = change.generation
                    yield change
            self.events_lost += 1
            raise errors.events_lost(self.token(last))
        finally:
            self._subscriptions.discard(sub)

    def _snapshot(self, wanted: frozenset[str]) -> tuple[list[Change], int]:
        # No await here: the snapshot and the generation are one consistent cut.
        generation = self._store.generation
        items = [Change(generation, ADD, name, obj.uuid, obj)
                 for name in CLASSES if name in wanted for obj in self._store.list(name)]
        return items, generation

    async def _replay(self, wanted: frozenset[str], token: str) -> tuple[list[Change], int]:
        since = self.parse_token(token)
        changes = await self._store.changes_since(since)
        if changes is None:
            self.events_lost += 1
            raise errors.events_lost(token)
        last = max([since, *(c.generation for c in changes)])
        return [c for c in changes if c.class_name in wanted], last

    def token(self, generation: int) -> str:
        return f"{self._store.db_id}.{generation}"

    def parse_token(self, token: str) -> int:
        """The generation in a token of this database; EVENTS_LOST for a token
        of another database or from the future, INVALID_VALUE for garbage."""
        db_id, _, generation = token.partition(".")
        if not (generation.isascii() and generation.isdigit() and len(generation) <= 20):
            raise errors.invalid_value("token", token)
        if db_id != self._store.db_id or int(generation) > self._store.generation:
            self.events_lost += 1
            raise errors.events_lost(token)
        return int(generation)


def parse_classes(classes: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(classes) or frozenset(CLASSES)
    for name in wanted:
        if name not in CLASSES:
            raise errors.invalid_value("classes", name)
    return wanted
