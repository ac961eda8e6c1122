"""The etcd store against a real etcd member: fenced group commits, the warm
copy on a second master, ADD/MOD/DEL, Watch history, a deposed epoch refused."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import etcd as etcd_support
from xcp_control.errors import XcpError
from xcp_control.master import etcd_client as ec
from xcp_control.master.etcd_store import PER_REVISION, EtcdStore
from xcp_control.master.store import ADD, DEL, MOD, Delete, Put
from xcp.v1 import datamodel_pb2 as dm

pytestmark = pytest.mark.skipif(not etcd_support.available(), reason="etcd is not installed")


@pytest.fixture
def etcd(tmp_path):
    with etcd_support.EtcdCluster(1, tmp_path, fsync=False) as cluster:
        yield cluster


async def _elect(client: ec.EtcdClient, key: bytes) -> int:
    reply = await client.txn([ec.create_revision_is(key, 0)], [ec.put_op(key, b"test")])
    assert reply.succeeded
    return reply.header.revision


def _vm(uuid: str, name: str = "vm") -> dm.VM:
    return dm.VM(uuid=uuid, name_label=name, memory=1, vcpus=1, power_state=dm.HALTED)


UUIDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(300)]


def test_commits_are_fenced_and_followed(etcd):
    async def main():
        epoch = {"value": 0}

        def fence() -> int:
            if not epoch["value"]:
                raise XcpError("HOST_IS_SLAVE", master="")
            return epoch["value"]

        leader = await EtcdStore(ec.EtcdClient(etcd.urls), "/t", fence).open()
        follower = await EtcdStore(ec.EtcdClient(etcd.urls), "/t", fence).open()
        seen = []
        follower.add_listener(seen.extend)
        try:
            with pytest.raises(XcpError) as refused:
                await leader.put(_vm(UUIDS[0]))
            assert refused.value.reason == "HOST_IS_SLAVE"
            epoch["value"] = await _elect(leader.client, leader.keys.leader)
            # Concurrent commits share transactions; each answers with its own change.
            changes = await asyncio.gather(*(leader.put(_vm(u)) for u in UUIDS[:200]))
            assert [c.op for c in changes] == [ADD] * 200
            assert leader.commits < 200  # group commit
            assert leader.get("vm", UUIDS[5]).name_label == "vm"  # read your write
            mod = await leader.put(_vm(UUIDS[5], "renamed"))
            assert mod.op == MOD
            gone = await leader.delete("vm", UUIDS[6])
            assert gone.op == DEL and gone.obj.name_label == "vm"
            assert gone.generation // PER_REVISION == leader.revision
            await follower.wait_revision(leader.revision, 5)
            assert follower.get("vm", UUIDS[5]).name_label == "renamed"
            assert follower.get("vm", UUIDS[6]) is None
            assert len(follower.list("vm")) == 199
            assert follower.generation == leader.generation
            assert follower.db_id == leader.db_id
            assert [c.op for c in seen].count(ADD) == 200
            history = await follower.changes_since(changes[-1].generation)
            assert [(c.op, c.uuid) for c in history][-2:] == [(MOD, UUIDS[5]), (DEL, UUIDS[6])]
            # The watch asks for no prev_kv: the deleted value is the working copy's.
            assert history[-1].obj.name_label == "vm" and history[-1].obj.uuid == UUIDS[6]
            # A commit too large for one shared txn goes alone, atomically.
            big = await leader.commit([Put(_vm(u)) for u in UUIDS[200:300]])
            assert len({c.generation // PER_REVISION for c in big}) == 1
            # A new leader key (another epoch): the old epoch's writes are refused.
            await leader.client.txn([], [ec.delete_op(leader.keys.leader)])
            await _elect(leader.client, leader.keys.leader)
            with pytest.raises(XcpError) as deposed:
                await leader.put(_vm(UUIDS[7], "stale"))
            assert deposed.value.reason == "HOST_IS_SLAVE"
            assert leader.get("vm", UUIDS[7]).name_label == "vm"
            # The pool object (HA settings, pool_ha.py) is a class like the others.
            await leader.client.txn([], [ec.delete_op(leader.keys.leader)])
            epoch["value"] = await _elect(leader.client, leader.keys.leader)
            await leader.put(dm.Pool(uuid=leader.db_id, ha_enabled=True,
                                     ha_host_failures_to_tolerate=1))
            # A third master loads it all, paged.
            late = await EtcdStore(ec.EtcdClient(etcd.urls), "/t", fence).open()
            assert len(late.list("vm")) == 299 and late.generation >= leader.generation
            assert late.find("vm", "power_state", dm.HALTED)
            assert late.get("pool", late.db_id).ha_host_failures_to_tolerate == 1
            await late.close()
        finally:
            await leader.close()
            await follower.close()

    asyncio.run(main())


def test_the_leader_applies_its_own_writes_at_once_exactly_as_the_watch_would(etcd):
    """A follower's copy (from the watch) and the leader's (from etcd's
    answers) publish the same changes: ops, generations, objects. The
    leader's watch is held back here: on loopback it often brings our own
    revision before etcd's answer does (then that answer finds it applied)."""
    async def main():
        epoch = {"value": 0}
        leader = EtcdStore(ec.EtcdClient(etcd.urls), "/s", lambda: epoch["value"])
        take = leader._take

        async def late(response) -> None:
            await asyncio.sleep(0.05)
            await take(response)
        leader._take = late
        await leader.open()
        follower = await EtcdStore(ec.EtcdClient(etcd.urls), "/s", lambda: 0).open()
        mine, theirs = [], []
        leader.add_listener(mine.extend)
        follower.add_listener(theirs.extend)
        try:
            epoch["value"] = await _elect(leader.client, leader.keys.leader)
            await leader.wait_revision(epoch["value"], 5)
            await asyncio.gather(*(leader.put(_vm(u)) for u in UUIDS[:50]))
            await leader.commit([Put(_vm(UUIDS[1], "again")), Delete("vm", UUIDS[2]),
                                 Delete("vm", UUIDS[299])])  # the last: absent
            await asyncio.gather(*(leader.delete("vm", u) for u in UUIDS[10:20]))
            obj = _vm(UUIDS[3], "mine")
            await leader.put(obj)
            obj.name_label = "changed after the commit"  # must not reach the copy
            assert leader.get("vm", UUIDS[3]).name_label == "mine"
            assert leader.applied_at_once > 0
            await follower.wait_revision(leader.revision, 5)
            key = lambda c: (c.generation, c.op, c.uuid, c.obj.SerializeToString())  # noqa: E731
            assert [key(c) for c in mine] == [key(c) for c in theirs]
            assert follower.generation == leader.generation
            assert sorted(v.uuid for v in leader.list("vm")) == sorted(
                v.uuid for v in follower.list("vm"))
        finally:
            await leader.close()
            await follower.close()

    asyncio.run(main())
