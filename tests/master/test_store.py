"""SqliteStore: memory reads, durable group-committed writes, change log. No network."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid as uuid_module

import pytest

from xcp_control.master.store import ADD, DEL, MOD, Change, Delete, Put
from xcp_control.master.sqlite_store import SqliteStore
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm


def new_uuid() -> str:
    return str(uuid_module.uuid4())


def vm(name: str = "vm", **fields) -> dm.VM:
    fields.setdefault("uuid", new_uuid())
    fields.setdefault("power_state", dm.HALTED)
    return dm.VM(name_label=name, memory=1 << 30, vcpus=1, **fields)


def run(coro_fn, path, **store_kwargs):
    """Run `await coro_fn(store)` on a freshly opened store; close it afterwards."""
    async def main():
        store = await SqliteStore(str(path), **store_kwargs).open()
        try:
            return await coro_fn(store)
        finally:
            await store.close()
    return asyncio.run(main())


@pytest.fixture
def db(tmp_path):
    return tmp_path / "pool.db"


def test_put_get_list_delete(db):
    async def body(store):
        assert store.generation == 0
        a, b = vm("a"), vm("b")
        change = await store.put(a)
        assert (change.op, change.class_name, change.uuid) == (ADD, "vm", a.uuid)
        await store.put(b)
        assert store.get("vm", a.uuid) == a
        assert store.get("vm", "nope") is None
        assert store.get("host", a.uuid) is None  # classes are separate tables
        assert sorted(v.name_label for v in store.list("vm")) == ["a", "b"]
        gone = await store.delete("vm", a.uuid)
        assert (gone.op, gone.obj) == (DEL, a)  # DEL carries the last value
        assert store.get("vm", a.uuid) is None
        assert [v.uuid for v in store.list("vm")] == [b.uuid]
    run(body, db)


def test_put_stores_a_copy(db):
    async def body(store):
        a = vm("a")
        await store.put(a)
        a.name_label = "changed after put"
        assert store.get("vm", a.uuid).name_label == "a"
        mine = copy(store.get("vm", a.uuid))
        mine.name_label = "mine"
        assert store.get("vm", a.uuid).name_label == "a"
    run(body, db)


def test_put_hooks_amend_every_put_of_their_class_durably(db):
    async def body(store):
        store.add_put_hook("vm", lambda obj: setattr(obj, "name_label", obj.name_label + "!"))
        a = vm("a")
        await store.put(a)
        assert store.get("vm", a.uuid).name_label == "a!"
        assert a.name_label == "a"  # the caller's object is left alone
        host = dm.Host(uuid=new_uuid(), name_label="h")
        await store.commit([Put(host)])
        assert store.get("host", host.uuid).name_label == "h"  # another class: untouched
        return a.uuid
    uuid = run(body, db)

    async def reopened(store):
        return store.get("vm", uuid).name_label
    assert run(reopened, db) == "a!"  # what was written is the amended object


def test_find_by_index_follows_changes(db):
    async def body(store):
        h1, h2 = new_uuid(), new_uuid()
        a = vm("a", power_state=dm.RUNNING, resident_on=h1)
        b = vm("b", power_state=dm.RUNNING, resident_on=h1)
        c = vm("c")
        await store.commit([Put(a), Put(b), Put(c)])
        assert {v.uuid for v in store.find("vm", "resident_on", h1)} == {a.uuid, b.uuid}
        assert store.find("vm", "resident_on", h2) == []
        assert [v.uuid for v in store.find("vm", "power_state", dm.HALTED)] == [c.uuid]
        moved = copy(a)
        moved.resident_on, moved.power_state = h2, dm.PAUSED
        await store.put(moved)
        assert [v.uuid for v in store.find("vm", "resident_on", h1)] == [b.uuid]
        assert [v.uuid for v in store.find("vm", "resident_on", h2)] == [a.uuid]
        assert [v.uuid for v in store.find("vm", "power_state", dm.PAUSED)] == [a.uuid]
        await store.delete("vm", b.uuid)
        assert store.find("vm", "resident_on", h1) == []
        assert {v.uuid for v in store.find("vm", "power_state", dm.RUNNING)} == set()
        metrics = dm.HostMetrics(uuid=new_uuid(), host=h1, live=True)
        await store.put(metrics)
        assert store.find("host_metrics", "host", h1) == [metrics]
    run(body, db)


def test_generation_increments_once_per_change(db):
    async def body(store):
        a, b = vm("a"), vm("b")
        first = await store.commit([Put(a), Put(b)])
        assert [c.generation for c in first] == [1, 2]
        assert store.generation == 2
        second = await store.put(copy(a))
        assert second.generation == 3 and store.generation == 3
        third = await store.delete("vm", a.uuid)
        assert third.generation == 4 and store.generation == 4
        assert await store.commit([]) == []
        assert store.generation == 4
    run(body, db)


def test_add_mod_del_ops(db):
    async def body(store):
        a = vm("a")
        assert (await store.put(a)).op == ADD
        renamed = copy(a)
        renamed.name_label = "renamed"
        change = await store.put(renamed)
        assert change.op == MOD and change.obj.name_label == "renamed"
        assert (await store.delete("vm", a.uuid)).op == DEL
        assert (await store.put(a)).op == ADD  # created again after its deletion
        # Deleting an absent object is a DEL change carrying an empty object.
        absent = await store.delete("vm", "no-such-vm")
        assert (absent.op, absent.obj.uuid, absent.obj.name_label) == (DEL, "no-such-vm", "")
    run(body, db)


def test_overlapping_writes_to_one_object_tell_add_from_mod(db):
    async def body(store):
        a = vm("a")
        later = copy(a)
        later.name_label = "later"
        first, second = await asyncio.gather(store.put(a), store.put(later))
        assert (first.op, second.op) == (ADD, MOD)
        assert store.get("vm", a.uuid).name_label == "later"
        gone, back = await asyncio.gather(store.delete("vm", a.uuid), store.put(a))
        assert (gone.op, back.op) == (DEL, ADD)
        assert store.get("vm", a.uuid) == a
    run(body, db)


def test_durable_across_close_and_reopen(db):
    a, b, c = vm("a"), vm("b", resident_on=new_uuid(), power_state=dm.RUNNING), vm("c")
    host = dm.Host(uuid=new_uuid(), name_label="h1", address="127.0.0.1:1", enabled=True,
                   other_config={"k": "v"})

    async def write(store):
        await store.commit([Put(a), Put(b), Put(c), Put(host)])
        await store.delete("vm", c.uuid)
        return store.db_id, store.generation

    db_id, generation = run(write, db)
    assert generation == 5

    async def read(store):
        assert store.db_id == db_id
        assert store.generation == generation
        assert store.get("vm", a.uuid) == a
        assert store.get("vm", c.uuid) is None
        assert store.get("host", host.uuid) == host
        assert store.find("vm", "resident_on", b.resident_on) == [b]  # indexes rebuilt
        change = await store.put(vm("d"))
        assert change.generation == generation + 1  # history continues
        return await store.changes_since(0)

    history = run(read, db)
    assert [c.generation for c in history] == list(range(1, generation + 2))
    assert [c.op for c in history] == [ADD, ADD, ADD, ADD, DEL, ADD]


def test_database_file_is_sound_after_close(db):
    run(lambda store: store.commit([Put(vm(str(i))) for i in range(50)]), db)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM objects").fetchone() == (50,)
    finally:
        conn.close()


def test_two_databases_have_different_ids(tmp_path):
    async def db_id(store):
        return store.db_id
    first, second = run(db_id, tmp_path / "a.db"), run(db_id, tmp_path / "b.db")
    assert first and second and first != second
    assert run(db_id, tmp_path / "a.db") == first


def test_changes_since(db):
    async def body(store):
        a, b = vm("a"), vm("b")
        await store.put(a)
        await store.put(b)
        await store.delete("vm", a.uuid)
        assert await store.changes_since(store.generation) == []
        assert await store.changes_since(store.generation + 10) == []
        after_one = await store.changes_since(1)
        assert [(c.generation, c.op, c.uuid) for c in after_one] == [
            (2, ADD, b.uuid), (3, DEL, a.uuid)]
        assert after_one[1].obj == a  # the last value of the deleted object
        assert [c.generation for c in await store.changes_since(0)] == [1, 2, 3]
    run(body, db)


def test_changes_since_a_pruned_generation_is_none(db):
    # The writer prunes the log to change_log_size every 256 commits.
    async def body(store):
        objs = [vm(str(i)) for i in range(300)]
        for obj in objs:
            await store.put(obj)  # 300 separate commits: one prune at the 256th
        assert store.generation == 300
        assert await store.changes_since(0) is None
        assert await store.changes_since(200) is None
        # The prune at generation 256 kept the last 10 changes (247..256) and newer.
        assert await store.changes_since(245) is None
        kept = await store.changes_since(246)
        assert kept is not None and [c.generation for c in kept] == list(range(247, 301))
        recent = await store.changes_since(290)
        assert [c.uuid for c in recent] == [o.uuid for o in objs[290:]]
    run(body, db, change_log_size=10)


def test_listeners_called_in_order_with_committed_changes(db):
    async def body(store):
        calls: list[tuple[str, list[int]]] = []
        def listener(name):
            return lambda changes: calls.append((name, [c.generation for c in changes]))
        store.add_listener(listener("first"))
        store.add_listener(listener("second"))
        await store.commit([Put(vm("a")), Put(vm("b"))])
        assert calls == [("first", [1, 2]), ("second", [1, 2])]
        calls.clear()
        await asyncio.gather(*(store.put(vm(str(i))) for i in range(20)))
        firsts = [g for who, gens in calls if who == "first" for g in gens]
        seconds = [g for who, gens in calls if who == "second" for g in gens]
        assert firsts == seconds == list(range(3, 23))  # every change, in commit order
        # Each batch reaches the first listener, then the second.
        assert [who for who, _ in calls] == ["first", "second"] * (len(calls) // 2)
    run(body, db)


def test_listener_sees_memory_already_updated(db):
    async def body(store):
        seen = []
        a = vm("a")
        store.add_listener(lambda changes: seen.append(
            (store.generation, store.get("vm", a.uuid) is not None)))
        await store.put(a)
        assert seen == [(1, True)]
    run(body, db)


def test_concurrent_commits_group_into_batches(db):
    async def body(store):
        batches = []
        store.add_listener(batches.append)
        objs = [vm(str(i)) for i in range(400)]
        changes = await asyncio.gather(*(store.put(o) for o in objs))
        assert sorted(c.generation for c in changes) == list(range(1, 401))
        assert all(store.get("vm", o.uuid) == o for o in objs)
        # One listener call per writer transaction: far fewer than 400 commits.
        assert sum(len(b) for b in batches) == 400
        assert len(batches) < 100, f"{len(batches)} transactions for 400 concurrent commits"
        assert [c.generation for b in batches for c in b] == list(range(1, 401))
    run(body, db)


def test_commit_of_several_ops_is_atomic_in_one_batch(db):
    async def body(store):
        batches = []
        store.add_listener(batches.append)
        a = vm("a")
        host = dm.Host(uuid=new_uuid(), name_label="h")
        changes = await store.commit([Put(a), Put(host), Delete("vm", a.uuid)])
        assert [c.op for c in changes] == [ADD, ADD, DEL]
        assert store.get("vm", a.uuid) is None and store.get("host", host.uuid) == host
        assert len(batches) == 1 and batches[0] == changes
    run(body, db)


def test_change_is_what_watch_reports(db):
    async def body(store):
        a = vm("a")
        change = await store.put(a)
        assert change == Change(1, ADD, "vm", a.uuid, a)
    run(body, db)
