"""The HA config and witness lists the leader gives slaves on their heartbeat
streams (master/ha_config.py), and what it records of their
acknowledgements: in the Hello answer, pushed on change, written to the Host
record before it is sent, one pending list at a time, armed per generation,
read back by a new leader."""

from __future__ import annotations

import uuid as uuid_module

from tests.master.world import NOW, World, run
from xcp_control.master.ha_config import HaAnnouncer
from xcp_control.master.ha_witness import Witnesses
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import liveness_service_pb2 as pb

HOST = "11111111-1111-4111-8111-111111111111"


def uuid(n: int) -> str:
    return str(uuid_module.UUID(int=n, version=4))


class Rig:
    """Sessions and an announcer wired as the master wires them; every push
    is checked to be durable first (the store holds what was sent)."""

    def __init__(self, world: World, k: int = 32, put_hook: bool = True) -> None:
        self.world = world
        self.pool_ha = PoolHa(world.store, world.liveness)
        self.ha = HaAnnouncer(world.store, self.pool_ha, detect_bound=3.0, transport_bound=0.5,
                              k=k)
        # What each stream was sent: Hello answers and pushes, in order.
        self.pushed: list[tuple[str, pb.HeartbeatResponse]] = []
        self.open: list[str] = []
        self.ha.push = self._push
        self.ha.open_hosts = lambda: list(self.open)
        if put_hook:
            world.store.add_put_hook("host", self.ha.keep_fields)
        world.store.add_listener(self.ha.on_changes)
        mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW,
                               write_interval=30.0)
        self.sessions = HeartbeatSessions(world.store, world.liveness, mirror, 1.0,
                                          clock=lambda: NOW)
        self.sessions.ha = self.ha
        self.streams: dict[str, object] = {}

    def _push(self, host: str, message: pb.HeartbeatResponse) -> None:
        if message.witness_version:
            record = self.world.store.get("host", host)
            assert message.witness_version in (record.ha_witness_pending_version,
                                               record.ha_witness_version), "sent before durable"
        self.pushed.append((host, message))

    async def hello(self, host: str, **fields) -> pb.HeartbeatResponse:
        fields.setdefault("address", f"10.0.0.{len(self.streams) + 1}:9")
        session, answer = await self.sessions.hello(pb.Hello(host_uuid=host, **fields))
        self.streams[host] = session
        self.pushed.append((host, answer))  # what the stream got first
        if host not in self.open:
            self.open.append(host)
        return answer

    async def ack(self, host: str, message: pb.HeartbeatResponse) -> None:
        """The slave applied `message` (its list, if any) and says so."""
        version = message.witness_version or self.record(host).ha_witness_version
        self.sessions.beat(self.streams[host], pb.Beat(
            seq=1, ha_ack=True, ha_witness_version=version,
            ha_generation=message.ha_generation))
        await self.ha.settled()

    def last(self, host: str) -> pb.HeartbeatResponse:
        return [m for h, m in self.pushed if h == host][-1]

    def record(self, host: str) -> dm.Host:
        return self.world.store.get("host", host)

    async def enable(self, on: bool = True) -> None:
        await self.pool_ha.configure(on, 0)
        await self.ha.settled()


def peers(message: pb.HeartbeatResponse) -> list[str]:
    return sorted(p.host_uuid for p in message.peers)


def test_the_hello_answer_carries_the_config_and_the_list_written_first(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        await rig.enable()
        a, b = uuid(1), uuid(2)
        first = await rig.hello(a, fence_after_ms=4000)
        assert first.ha_config and first.ha_enabled and first.ha_generation == 1
        assert (first.fence_after_ms, first.detect_bound_ms) == (4000, 3000)
        assert first.witness_version == 0 and list(first.peers) == []  # alone
        answer = await rig.hello(b)
        assert (answer.witness_version, peers(answer)) == (1, [a])
        assert [(p.address) for p in answer.peers] == ["10.0.0.1:9"]
        assert tuple(rig.record(b).ha_witnesses_pending) == (a,)  # durable before the answer
        await rig.ha.settled()
        to_a = rig.last(a)  # a's list grew: pushed, after its write
        assert (to_a.witness_version, peers(to_a), to_a.ha_generation) == (1, [b], 1)
        await rig.ack(a, to_a)
        record = rig.record(a)
        assert (record.ha_witness_version, list(record.ha_witnesses)) == (1, [b])
        assert record.ha_witness_pending_version == 0 and record.ha_armed_generation == 1
        assert rig.ha.may_hold(a) == [(b,)] and rig.ha.armed(a)
        assert rig.ha.may_hold(b) == [(a,)] and not rig.ha.armed(b)  # b has not acknowledged
    run(body, tmp_path)


def test_one_pending_list_at_a_time(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        await rig.enable()
        a, b, c = uuid(1), uuid(2), uuid(3)
        await rig.hello(a)
        await rig.hello(b)
        await rig.ha.settled()
        assert rig.last(a).witness_version == 1  # a holds [b] pending, not acknowledged
        await rig.hello(c)
        await rig.ha.settled()
        assert rig.last(a).witness_version == 1  # [b, c] waits for that acknowledgement
        assert rig.ha.may_hold(a) == [(b,)]
        await rig.ack(a, rig.last(a))
        nxt = rig.last(a)
        assert (nxt.witness_version, peers(nxt)) == (2, sorted([b, c]))
        assert rig.ha.may_hold(a) == [(b,), tuple(sorted([b, c]))]  # either, until acked
        await rig.ack(a, nxt)
        assert rig.ha.may_hold(a) == [tuple(sorted([b, c]))]
    run(body, tmp_path)


def test_lists_stay_at_k_and_a_join_changes_only_the_newcomer(tmp_path):
    async def body(world: World):
        rig = Rig(world, k=3)
        await rig.enable()
        pool = [uuid(i) for i in range(1, 8)]
        for h in pool:
            answer = await rig.hello(h)
            await rig.ha.settled()
            await rig.ack(h, answer)
            for other in pool:  # every list brought to the newest, acknowledged
                while rig.record(other) and rig.record(other).ha_witness_pending_version:
                    await rig.ack(other, rig.last(other))
        lists = {h: rig.ha.may_hold(h) for h in pool}
        assert all(len(ls) == 1 and len(ls[0]) == 3 and h not in ls[0] for h, ls in lists.items())
        writes, pushed = rig.ha.writes, len(rig.pushed)
        newcomer = uuid(99)
        answer = await rig.hello(newcomer)
        await rig.ha.settled()
        assert len(answer.peers) == 3
        assert {h: rig.ha.may_hold(h) for h in pool} == lists  # full lists: unchanged
        # Nothing written but the newcomer's own record, nothing sent but its answer.
        assert (rig.ha.writes, len(rig.pushed)) == (writes, pushed + 1)
        # A host's other fields changing (not its address) sends nobody anything.
        disabled = copy(rig.record(pool[0]))
        disabled.enabled = False
        await world.store.put(disabled)
        await rig.ha.settled()
        assert len(rig.pushed) == pushed + 1
    run(body, tmp_path)


def test_a_member_gone_is_replaced_and_a_moved_one_resent(tmp_path):
    async def body(world: World):
        rig = Rig(world, k=2)
        await rig.enable()
        a, b, c, d = (uuid(i) for i in range(1, 5))
        for h in (a, b, c, d):
            await rig.hello(h)
            await rig.ha.settled()
            for other in (a, b, c, d):
                while rig.record(other) and rig.record(other).ha_witness_pending_version:
                    await rig.ack(other, rig.last(other))
        (held,) = rig.ha.may_hold(a)
        gone, kept = held
        await world.store.delete("host", gone)
        await rig.ha.settled()
        replaced = rig.last(a)
        assert gone not in peers(replaced) and kept in peers(replaced)
        assert rig.ha.may_hold(a) == [held, tuple(peers(replaced))]  # until acknowledged
        await rig.ack(a, replaced)
        # The kept one moves: the same list, its new address, the same version.
        moved = copy(rig.record(kept))
        moved.address = "10.9.9.9:9"
        version = rig.record(a).ha_witness_version
        await world.store.put(moved)
        await rig.ha.settled()
        resent = rig.last(a)
        assert resent.witness_version == version
        assert {p.host_uuid: p.address for p in resent.peers}[kept] == "10.9.9.9:9"
    run(body, tmp_path)


def test_armed_per_generation_and_a_switch_off_writes_nothing_per_host(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        await rig.enable()
        a, b = uuid(1), uuid(2)
        for h in (a, b):
            await rig.ack(h, await rig.hello(h))
        assert rig.ha.armed(a) and rig.ha.armed(b)
        writes = rig.ha.writes
        await rig.enable(False)
        off = rig.last(a)
        assert (off.ha_config, off.ha_enabled, off.ha_generation, off.witness_version) == (
            True, False, 0, 0)
        await rig.ack(a, off)
        await rig.ack(b, rig.last(b))
        assert rig.ha.writes == writes  # disarming is the generation's business
        assert not rig.ha.armed(a)
        await rig.enable(True)  # generation 2: a is not armed until it says so
        on = rig.last(a)
        assert on.ha_generation == 2 and not rig.ha.armed(a)
        await rig.ack(a, on)
        assert rig.ha.armed(a) and not rig.ha.armed(b)
        # A fresh process of a (holding nothing) is disarmed by its own Hello's write.
        before = rig.record(a).ha_witness_version
        fresh = await rig.hello(a, ha_generation=0, ha_witness_version=0)
        assert not rig.ha.armed(a)
        record = rig.record(a)  # it holds none: only the list its answer carries
        assert list(record.ha_witnesses) == [] and fresh.witness_version > before
        assert rig.ha.may_hold(a) == [(b,)] and record.ha_witness_pending_version == \
            fresh.witness_version
        await rig.hello(b, ha_generation=2, ha_witness_version=rig.record(b).ha_witness_version)
        assert rig.ha.armed(b)  # a Hello holding the current generation arms too
    run(body, tmp_path)


def test_ha_off_sends_no_lists_and_writes_nothing(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        for n in range(1, 5):
            answer = await rig.hello(uuid(n))
            assert answer.ha_config and not answer.ha_enabled and not answer.peers
            await rig.ack(uuid(n), answer)
        await rig.ha.settled()
        assert [h for h, m in rig.pushed if m.peers or not m.interval_ms] == []  # answers only
        assert rig.ha.writes == 0
        assert all(rig.ha.may_hold(uuid(n)) == [] for n in range(1, 5))
    run(body, tmp_path)


def test_switching_on_gives_every_host_its_list(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        pool = [uuid(n) for n in range(1, 5)]
        for h in pool:
            await rig.hello(h)
        await rig.enable()
        for h in pool:
            _, small, listed = [m for x, m in rig.pushed if x == h]
            assert small.ha_enabled and not small.peers and small.ha_generation == 1
            assert peers(listed) == sorted(set(pool) - {h})
    run(body, tmp_path)


def test_a_new_leader_reads_what_the_hosts_may_hold(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        await rig.enable()
        a, b, c = uuid(1), uuid(2), uuid(3)
        for h in (a, b):
            await rig.ack(h, await rig.hello(h))
        await rig.ha.settled()
        await rig.ack(a, rig.last(a))
        await rig.hello(c)
        await rig.ha.settled()  # a: [b] acknowledged, [b, c] pending
        successor = HaAnnouncer(world.store, rig.pool_ha, detect_bound=3.0)
        assert successor.may_hold(a) == rig.ha.may_hold(a) == [(b,), tuple(sorted([b, c]))]
        assert successor.armed(a) and successor.fence_after(a) == 10.0
        successor.lead()
        assert successor.may_hold(a) == rig.ha.may_hold(a)
    run(body, tmp_path)


async def _a_list_given_after_a_copy_was_taken(rig: Rig) -> tuple[str, dm.Host]:
    """HA on, host a, a copy of a's record, then b joins (a's list: pending v1)."""
    await rig.enable()
    a, b = uuid(1), uuid(2)
    await rig.hello(a)
    stale = copy(rig.record(a))  # taken before a's list
    await rig.hello(b)
    await rig.ha.settled()
    return a, stale


def test_an_older_copy_written_over_the_record_keeps_the_ha_fields(tmp_path):
    """Another writer's put of an older copy (DisableHost's) carries HA's
    fields as the leader last decided them: not undone even for a moment (a
    failover in that moment would read the older state)."""
    async def body(world: World):
        rig = Rig(world)
        a, stale = await _a_list_given_after_a_copy_was_taken(rig)
        await rig.ack(a, rig.last(a))  # it holds its list and HA on: armed
        decided = copy(rig.record(a))
        assert decided.ha_witness_version == 1 and decided.ha_armed_generation >= 1
        stale.enabled = False  # another writer's change, on its older copy
        await world.store.put(stale)
        record = rig.record(a)  # at once: no second write needed
        assert not record.enabled
        assert Witnesses.of(record) == Witnesses.of(decided)
        assert record.ha_armed_generation == decided.ha_armed_generation
        assert stale.ha_witness_pending_version == 0  # the caller's object is left alone
    run(body, tmp_path)


def test_an_older_copy_written_over_the_record_is_written_again(tmp_path):
    """The backstop, for a put queued before the leader's decision (and so
    without it): the change is noticed and the fields written again."""
    async def body(world: World):
        rig = Rig(world, put_hook=False)
        a, stale = await _a_list_given_after_a_copy_was_taken(rig)
        assert rig.record(a).ha_witness_pending_version == 1
        stale.enabled = False  # another writer's change, on its older copy
        await world.store.put(stale)
        await rig.ha.settled()
        record = rig.record(a)
        assert record.ha_witness_pending_version == 1 and not record.enabled
    run(body, tmp_path)


def test_a_fence_after_not_above_the_floor_is_raised_and_the_slave_told(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        answer = await rig.hello(HOST, fence_after_ms=3500)
        assert answer.fence_after_ms == 4500  # dead_after 3 + transport 0.5 + 1
        assert rig.ha.fence_after(HOST) == 4.5
        _, answer = await rig.sessions.hello(pb.Hello(host_uuid=HOST, address="10.0.0.1:9"))
        assert answer.fence_after_ms == 10_000  # an older slave (none): the default
    run(body, tmp_path)


def test_a_new_leader_knows_the_lease_of_a_host_that_has_not_said_hello_to_it(tmp_path):
    async def body(world: World):
        rig = Rig(world)
        await rig.hello(HOST, fence_after_ms=30_000)
        assert world.store.get("host", HOST).fence_after_ms == 30_000  # durable
        successor = HaAnnouncer(world.store, rig.pool_ha, detect_bound=3.0)
        assert successor.fence_after(HOST) == 30.0
        assert successor.fence_after("22222222-2222-4222-8222-222222222222") == 10.0
    run(body, tmp_path)


def test_a_slave_whose_channel_notices_us_late_gets_a_longer_lease(tmp_path):
    """Its first stream was built before it heard our interval: the floor is
    dead_after + the slave's own transport bound when that is the larger."""
    async def body(world: World):
        rig = Rig(world)
        answer = await rig.hello(HOST, fence_after_ms=5000, transport_bound_ms=3000)
        assert answer.fence_after_ms == 7000  # dead_after 3 + the slave's 3 + 1
    run(body, tmp_path)
