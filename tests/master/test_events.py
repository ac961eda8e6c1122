"""EventHub.watch: snapshot, SYNC, live changes, resume by token, EVENTS_LOST.
No network, no sleeping: changes are committed to a real SqliteStore in tmp_path."""

from __future__ import annotations

import asyncio
import uuid as uuid_module

import pytest

from xcp_control.errors import XcpError
from xcp_control.master.events import EventHub, Sync, parse_classes
from xcp_control.master.store import ADD, DEL, MOD, CLASSES, Change, Put
from xcp_control.master.sqlite_store import SqliteStore
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm

STEP = 5.0  # bound on any single wait; nothing here should come near it


def vm(name: str) -> dm.VM:
    return dm.VM(uuid=str(uuid_module.uuid4()), name_label=name, power_state=dm.HALTED,
                 memory=1 << 20, vcpus=1)


def host(name: str) -> dm.Host:
    return dm.Host(uuid=str(uuid_module.uuid4()), name_label=name, enabled=True)


def run(body, tmp_path, queue_size: int = 100, **store_kwargs):
    async def main():
        store = await SqliteStore(str(tmp_path / "pool.db"), **store_kwargs).open()
        hub = EventHub(store, queue_size)
        store.add_listener(hub.publish)
        try:
            return await asyncio.wait_for(body(store, hub), 60)
        finally:
            await store.close()
    return asyncio.run(main())


async def take(stream, n: int) -> list:
    return [await asyncio.wait_for(anext(stream), STEP) for _ in range(n)]


async def until_sync(stream) -> tuple[list[Change], Sync]:
    items = []
    while True:
        item = await asyncio.wait_for(anext(stream), STEP)
        if isinstance(item, Sync):
            return items, item
        items.append(item)


def test_snapshot_then_sync_then_live_changes(tmp_path):
    async def body(store, hub):
        a, b, h = vm("a"), vm("b"), host("h")
        await store.commit([Put(a), Put(b), Put(h)])
        stream = hub.watch([], "")
        snapshot, sync = await until_sync(stream)
        assert {(c.op, c.class_name, c.uuid) for c in snapshot} == {
            (ADD, "vm", a.uuid), (ADD, "vm", b.uuid), (ADD, "host", h.uuid)}
        assert sync.generation == store.generation == 3
        assert hub.watchers == 1
        renamed = copy(a)
        renamed.name_label = "renamed"
        c = vm("c")
        await store.put(renamed)
        await store.put(c)
        await store.delete("vm", b.uuid)
        live = await take(stream, 3)
        assert [(x.op, x.uuid, x.generation) for x in live] == [
            (MOD, a.uuid, 4), (ADD, c.uuid, 5), (DEL, b.uuid, 6)]
        assert live[0].obj.name_label == "renamed" and live[2].obj == b
        await stream.aclose()
        assert hub.watchers == 0  # a watcher that leaves is unsubscribed
    run(body, tmp_path)


def test_empty_pool_gives_just_sync(tmp_path):
    async def body(store, hub):
        stream = hub.watch([], "")
        first = await asyncio.wait_for(anext(stream), STEP)
        assert first == Sync(0)
        await stream.aclose()
    run(body, tmp_path)


def test_class_filter(tmp_path):
    async def body(store, hub):
        a, h = vm("a"), host("h")
        await store.commit([Put(a), Put(h)])
        stream = hub.watch(["host"], "")
        snapshot, _ = await until_sync(stream)
        assert [c.uuid for c in snapshot] == [h.uuid]
        await store.put(vm("ignored"))
        h2 = host("h2")
        await store.put(h2)
        (change,) = await take(stream, 1)
        assert change.uuid == h2.uuid
        await stream.aclose()
    run(body, tmp_path)


def test_changes_committed_during_snapshot_are_not_lost_or_repeated(tmp_path):
    async def body(store, hub):
        first = vm("first")
        await store.put(first)
        stream = hub.watch(["vm"], "")
        # The subscription exists from the first anext: a change committed while the
        # watcher reads its snapshot arrives once, after SYNC.
        pending = asyncio.ensure_future(store.put(vm("during")))
        snapshot, sync = await until_sync(stream)
        await pending
        seen = {c.uuid for c in snapshot}
        if sync.generation < store.generation:
            (live,) = await take(stream, 1)
            seen_after = {live.uuid}
        else:
            seen_after = set()
        assert not seen & seen_after
        assert seen | seen_after == {v.uuid for v in store.list("vm")}
        await stream.aclose()
    run(body, tmp_path)


def test_resume_by_token_replays_exactly_what_was_missed(tmp_path):
    async def body(store, hub):
        a = vm("a")
        await store.put(a)
        stream = hub.watch([], "")
        _, sync = await until_sync(stream)
        b = vm("b")
        await store.put(b)
        (seen,) = await take(stream, 1)
        token = hub.token(seen.generation)
        await stream.aclose()
        # Disconnected: these happen while nobody watches.
        c = vm("c")
        renamed = copy(a)
        renamed.name_label = "renamed"
        await store.put(c)
        await store.put(renamed)
        await store.delete("vm", b.uuid)
        again = hub.watch([], token)
        replay, sync2 = await until_sync(again)
        assert [(x.op, x.uuid) for x in replay] == [(ADD, c.uuid), (MOD, a.uuid), (DEL, b.uuid)]
        assert sync2.generation == store.generation
        d = vm("d")
        await store.put(d)
        (live,) = await take(again, 1)
        assert (live.op, live.uuid) == (ADD, d.uuid)
        await again.aclose()
    run(body, tmp_path)


def test_resume_from_current_token_is_just_sync(tmp_path):
    async def body(store, hub):
        await store.put(vm("a"))
        stream = hub.watch([], hub.token(store.generation))
        assert await asyncio.wait_for(anext(stream), STEP) == Sync(store.generation)
        await stream.aclose()
    run(body, tmp_path)


def test_resume_with_class_filter_skips_other_classes(tmp_path):
    async def body(store, hub):
        token = hub.token(store.generation)
        h = host("h")
        await store.commit([Put(vm("a")), Put(h), Put(vm("b"))])
        stream = hub.watch(["host"], token)
        replay, sync = await until_sync(stream)
        assert [c.uuid for c in replay] == [h.uuid]
        assert sync.generation == 3  # the cut covers the skipped changes too
        await stream.aclose()
    run(body, tmp_path)


def test_slow_watcher_is_cut_off_with_events_lost(tmp_path):
    async def body(store, hub):
        stream = hub.watch([], "")
        _, sync = await until_sync(stream)
        for i in range(5):  # queue holds 3: the watcher cannot keep up
            await store.put(vm(str(i)))
        with pytest.raises(XcpError) as caught:
            while True:
                await asyncio.wait_for(anext(stream), STEP)
        assert caught.value.reason == "EVENTS_LOST"
        assert caught.value.params["token"].startswith(store.db_id + ".")
        assert hub.watchers == 0
        # Memory stays bounded: publishing to nobody is free, and a fresh watch works.
        await store.put(vm("later"))
        again = hub.watch([], "")
        snapshot, _ = await until_sync(again)
        assert len(snapshot) == 6
        await again.aclose()
    run(body, tmp_path, queue_size=3)


def test_cut_off_watcher_keeps_no_backlog(tmp_path):
    async def body(store, hub):
        stream = hub.watch([], "")
        await until_sync(stream)
        (sub,) = hub._subscriptions  # white box: what the hub holds for the watcher
        for i in range(50):
            await store.put(vm(str(i)))
        assert sub.lost and sub._queue.qsize() == 1  # only the marker
        with pytest.raises(XcpError):
            await take(stream, 10)
    run(body, tmp_path, queue_size=4)


def test_watcher_keeping_up_is_not_cut_off(tmp_path):
    async def body(store, hub):
        stream = hub.watch([], "")
        await until_sync(stream)
        for i in range(20):
            await store.put(vm(str(i)))
            (change,) = await take(stream, 1)
            assert change.obj.name_label == str(i)
        await stream.aclose()
    run(body, tmp_path, queue_size=2)


def test_filtered_out_changes_do_not_fill_the_queue(tmp_path):
    async def body(store, hub):
        stream = hub.watch(["host"], "")
        await until_sync(stream)
        for i in range(10):
            await store.put(vm(str(i)))
        h = host("h")
        await store.put(h)
        (change,) = await take(stream, 1)
        assert change.uuid == h.uuid
        await stream.aclose()
    run(body, tmp_path, queue_size=2)


@pytest.mark.parametrize("token", ["garbage", ".", "abc.", "abc.x1", "abc.-1", "abc.1.2",
                                   "abc.١", "abc.²", "{db}.²", "{db}.١", "{db}. 1", "{db}.+1",
                                   "{db}." + "9" * 5000])
def test_malformed_token_is_invalid_value(tmp_path, token):
    async def body(store, hub):
        await store.put(vm("a"))
        with pytest.raises(XcpError) as caught:  # never an INTERNAL_ERROR (ValueError)
            await anext(hub.watch([], token.replace("{db}", store.db_id)))
        assert caught.value.reason == "INVALID_VALUE"
        assert caught.value.params["field"] == "token"
        assert hub.watchers == 0
    run(body, tmp_path)


def test_token_of_another_database_or_the_future_is_events_lost(tmp_path):
    async def body(store, hub):
        await store.put(vm("a"))
        for token in ("otherdb.1", hub.token(store.generation + 1), "x" * 200 + ".0"):
            with pytest.raises(XcpError) as caught:
                await anext(hub.watch([], token))
            assert caught.value.reason == "EVENTS_LOST"
            assert len(caught.value.params["token"]) <= 64
    run(body, tmp_path)


def test_token_older_than_the_log_is_events_lost(tmp_path):
    async def body(store, hub):
        token = hub.token(0)
        for i in range(260):  # the log is pruned to 10 entries at the 256th commit
            await store.put(vm(str(i)))
        with pytest.raises(XcpError) as caught:
            await anext(hub.watch([], token))
        assert caught.value.reason == "EVENTS_LOST"
        recent = hub.watch([], hub.token(255))
        replay, _ = await until_sync(recent)
        assert len(replay) == 5
        await recent.aclose()
    run(body, tmp_path, change_log_size=10)


def test_unknown_class_is_invalid_value(tmp_path):
    async def body(store, hub):
        with pytest.raises(XcpError) as caught:
            await anext(hub.watch(["vm", "pond"], ""))
        assert caught.value.params == {"field": "classes", "value": "pond"}
    run(body, tmp_path)


def test_parse_classes():
    assert parse_classes([]) == frozenset(CLASSES)
    assert parse_classes(["vm", "vm"]) == frozenset({"vm"})
    with pytest.raises(XcpError):
        parse_classes(["VM"])


def test_tokens_round_trip(tmp_path):
    async def body(store, hub):
        await store.put(vm("a"))
        assert hub.parse_token(hub.token(1)) == 1
        assert hub.parse_token(hub.token(0)) == 0
        assert hub.token(1).startswith(store.db_id)
    run(body, tmp_path)


def test_many_watchers_each_get_every_change(tmp_path):
    async def body(store, hub):
        streams = [hub.watch([], "") for _ in range(10)]
        for s in streams:
            await until_sync(s)
        objs = [vm(str(i)) for i in range(5)]
        await asyncio.gather(*(store.put(o) for o in objs))
        for s in streams:
            got = await take(s, 5)
            generations = [c.generation for c in got]
            assert generations == sorted(generations)  # in commit order
            assert {c.uuid for c in got} == {o.uuid for o in objs}
            await s.aclose()
        assert hub.watchers == 0
    run(body, tmp_path)
