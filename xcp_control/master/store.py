"""The pool database's interface: Host, HostMetrics, VM and Pool objects, their
changes, and the in-memory working copy every backend serves reads from.

Like xapi's database, the working copy lives in memory on the master (reads
never touch the disk or the network) and every change is durable before the
call that made it answers. The store is generic over the datamodel messages:
a class is a name, a message type and the fields it is indexed by.

Objects handed out by get/list/find are shared: treat them as read-only and
`model.copy()` before changing one.

Backends: `sqlite_store.SqliteStore` (the embedded default, one master).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

from google.protobuf.message import Message

from xcp.v1 import datamodel_pb2
from xcp_control.model import copy


@dataclass(frozen=True)
class ObjectClass:
    """A kind of object the store holds."""

    name: str  # the class name clients see ("vm"), also the Watch filter
    message: type[Message]  # the datamodel message stored
    indexes: tuple[str, ...]  # fields `find` looks up without a scan


CLASSES: dict[str, ObjectClass] = {
    c.name: c
    for c in (
        ObjectClass("host", datamodel_pb2.Host, ()),
        ObjectClass("host_metrics", datamodel_pb2.HostMetrics, ("host",)),
        ObjectClass("vm", datamodel_pb2.VM, ("resident_on", "power_state")),
        # The one pool object (uuid = db_id): the HA settings (pool_ha.py).
        ObjectClass("pool", datamodel_pb2.Pool, ()),
    )
}
CLASS_OF_MESSAGE = {c.message: c.name for c in CLASSES.values()}

ADD, MOD, DEL = "add", "mod", "del"


@dataclass(frozen=True)
class Put:
    """Create or replace an object (its class follows from its message type)."""

    obj: Message


@dataclass(frozen=True)
class Delete:
    """Remove an object; removing an absent object is a no-op change."""

    class_name: str
    uuid: str


PutHook = Callable[[Message], None]


@dataclass(frozen=True)
class Change:
    """One committed change, as Watch reports it."""

    generation: int  # position in the pool's history; strictly increasing
    op: str  # ADD, MOD or DEL
    class_name: str
    uuid: str
    obj: Message  # the value after the change; the last value for DEL


class Store(ABC):
    """What the rest of the master needs from the pool database."""

    @property
    @abstractmethod
    def generation(self) -> int:
        """The generation of the last committed change (0 for an empty pool)."""

    @property
    @abstractmethod
    def db_id(self) -> str:
        """Identifies this database, so a Watch token from another one is refused."""

    @abstractmethod
    def get(self, class_name: str, uuid: str) -> Message | None: ...

    @abstractmethod
    def list(self, class_name: str) -> list[Message]: ...

    @abstractmethod
    def find(self, class_name: str, field: str, value: object) -> list[Message]:
        """Objects whose indexed `field` equals `value`, without a scan."""

    @abstractmethod
    async def commit(self, ops: Sequence[Put | Delete]) -> list[Change]:
        """Apply ops atomically; return once they are durable. Every
        implementation starts with `prepared(ops)`."""

    def add_put_hook(self, class_name: str, hook: PutHook) -> None:
        """`hook(obj)` amends every object of `class_name` put from now on,
        whoever puts it, before the put is queued. For fields one owner keeps
        (HA's on Host records): a writer holding an older copy of the record
        then cannot undo them, even for the moment before the owner notices."""
        self.__dict__.setdefault("_put_hooks", {}).setdefault(class_name, []).append(hook)

    def prepared(self, ops: Sequence[Put | Delete]) -> list[Put | Delete]:
        """The ops checked (check_ops) and amended by the put hooks (copies:
        the caller's objects are left as they are)."""
        check_ops(ops)
        hooks: dict[str, list[PutHook]] = self.__dict__.get("_put_hooks", {})
        if not hooks:
            return list(ops)
        out: list[Put | Delete] = []
        for op in ops:
            if isinstance(op, Put) and (amend := hooks.get(CLASS_OF_MESSAGE[type(op.obj)])):
                obj = copy(op.obj)
                for hook in amend:
                    hook(obj)
                op = Put(obj)
            out.append(op)
        return out

    @abstractmethod
    async def changes_since(self, generation: int) -> list[Change] | None:
        """Committed changes after `generation`, or None when some of them are no
        longer retained (the caller must resync from a snapshot)."""

    @abstractmethod
    def add_listener(self, listener: Callable[[list[Change]], None]) -> None:
        """Call `listener` on the event loop with each batch of committed changes."""

    def add_commit_observer(self, observer: Callable[[float, int], None]) -> None:
        """Call observer(seconds, changes) after each durable write, from any
        thread (metrics). Backends that cannot time their writes ignore it."""

    async def put(self, obj: Message) -> Change:
        return (await self.commit([Put(obj)]))[0]

    async def delete(self, class_name: str, uuid: str) -> Change:
        return (await self.commit([Delete(class_name, uuid)]))[0]


class _Index:
    """field value -> uuids, for one indexed field of one class."""

    def __init__(self) -> None:
        self._by_value: dict[str, set[str]] = {}

    def add(self, value: object, uuid: str) -> None:
        self._by_value.setdefault(str(value), set()).add(uuid)

    def remove(self, value: object, uuid: str) -> None:
        uuids = self._by_value.get(str(value))
        if uuids is not None:
            uuids.discard(uuid)
            if not uuids:
                del self._by_value[str(value)]

    def get(self, value: object) -> set[str]:
        return self._by_value.get(str(value), set())


class WorkingCopy:
    """The objects in memory, with the indexes `find` uses: what every backend
    serves reads from. Backends install committed values; nothing else writes."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, Message]] = {name: {} for name in CLASSES}
        self._indexes = {(c.name, f): _Index() for c in CLASSES.values() for f in c.indexes}

    def get(self, class_name: str, uuid: str) -> Message | None:
        return self._objects[class_name].get(uuid)

    def list(self, class_name: str) -> list[Message]:
        return list(self._objects[class_name].values())

    def find(self, class_name: str, field: str, value: object) -> list[Message]:
        objects = self._objects[class_name]
        return [objects[u] for u in self._indexes[(class_name, field)].get(value)]

    def apply(self, change: Change) -> None:
        self.uninstall(change.class_name, change.uuid)
        if change.op != DEL:
            self.install(change.class_name, change.uuid, change.obj)

    def install(self, class_name: str, uuid: str, obj: Message) -> None:
        self._objects[class_name][uuid] = obj
        for field in CLASSES[class_name].indexes:
            self._indexes[(class_name, field)].add(getattr(obj, field), uuid)

    def uninstall(self, class_name: str, uuid: str) -> None:
        old = self._objects[class_name].pop(uuid, None)
        if old is not None:
            for field in CLASSES[class_name].indexes:
                self._indexes[(class_name, field)].remove(getattr(old, field), uuid)


class MemoryBackedStore(Store):
    """What every backend shares: reads served from its WorkingCopy
    (`self._memory`), listeners kept in `self._listeners`, the database id in
    `self._db_id`."""

    _memory: WorkingCopy
    _listeners: list
    _db_id: str

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


def check_ops(ops: Sequence[Put | Delete]) -> None:
    """Refuse a batch naming a class the store does not hold, before any of it
    is planned."""
    for op in ops:
        if isinstance(op, Put) and type(op.obj) not in CLASS_OF_MESSAGE:
            raise TypeError(f"the store holds no {type(op.obj).__name__} objects")
        if isinstance(op, Delete) and op.class_name not in CLASSES:
            raise TypeError(f"the store holds no class {op.class_name!r}")
