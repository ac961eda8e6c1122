"""The HA config the leader gives slaves on their heartbeat streams: in the
Hello answer (HeartbeatSessions.hello), pushed when HA is switched on or off,
and the peers delivered (paced, once per change) while HA is on."""

from __future__ import annotations

from tests.master.world import NOW, World, run
from xcp_control.master.ha_config import HaAnnouncer, PeerList
from xcp_control.master.store import Change
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.sessions import HeartbeatSessions
from xcp.v1 import liveness_service_pb2 as pb

HOST = "11111111-1111-4111-8111-111111111111"


def copy_with(message, **fields):
    out = copy(message)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def wired(world: World) -> tuple[HeartbeatSessions, HaAnnouncer, list]:
    pool_ha = PoolHa(world.store, world.liveness)
    announcer = HaAnnouncer(world.store, pool_ha, detect_bound=3.0, transport_bound=0.5,
                            min_gap=0.0, peer_rate=1e12)  # no pacing in these tests
    pushed: list[tuple[str, pb.HeartbeatResponse]] = []
    # As the stream sends them: the peers arrive encoded (rpc/server.PreEncodedResponses).
    announcer.push = lambda host, message: pushed.append(
        (host, pb.HeartbeatResponse.FromString(message) if isinstance(message, bytes)
         else message))
    world.store.add_listener(announcer.on_changes)
    mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW, write_interval=30.0)
    sessions = HeartbeatSessions(world.store, world.liveness, mirror, 1.0, clock=lambda: NOW)
    sessions.ha = announcer
    return sessions, announcer, pushed


def test_hello_answer_carries_the_config_and_the_peers_follow(tmp_path):
    async def body(world: World):
        sessions, announcer, pushed = wired(world)
        announcer.open_hosts = lambda: [HOST]
        other = await world.add_host("other")
        _, answer = await sessions.hello(pb.Hello(host_uuid=HOST, name_label="h",
                                                  address="10.0.0.1:9", fence_after_ms=4000))
        assert answer.ha_config and not answer.ha_enabled
        assert (answer.fence_after_ms, answer.detect_bound_ms) == (4000, 3000)
        assert list(answer.peers) == []  # the peers follow on the stream, with HA on
        assert announcer.fence_after(HOST) == 4.0
        await announcer.delivered()
        assert pushed == []  # HA off: no peers at all
        await PoolHa(world.store, world.liveness).configure(True, 0)
        await announcer.delivered()
        assert [(p.host_uuid, p.address) for p in pushed[-1][1].peers] == [
            (other.uuid, other.address)]  # not itself
        assert pushed[-1][1].fence_after_ms == 4000
        # An older slave (no fence_after): the default.
        _, answer = await sessions.hello(pb.Hello(host_uuid=HOST, address="10.0.0.1:9"))
        assert answer.fence_after_ms == 10_000
    run(body, tmp_path)


def test_a_fence_after_not_above_the_floor_is_raised_and_the_slave_told(tmp_path):
    async def body(world: World):
        sessions, announcer, _ = wired(world)
        _, answer = await sessions.hello(pb.Hello(host_uuid=HOST, address="10.0.0.1:9",
                                                  fence_after_ms=3500))
        assert answer.fence_after_ms == 4500  # dead_after 3 + transport 0.5 + 1
        assert announcer.fence_after(HOST) == 4.5
    run(body, tmp_path)


def test_config_is_pushed_to_open_streams_on_change(tmp_path):
    async def body(world: World):
        sessions, announcer, pushed = wired(world)
        announcer.open_hosts = lambda: [HOST]
        first = await world.add_host("first")
        pool_ha = PoolHa(world.store, world.liveness)
        await pool_ha.configure(True, 0)
        # At once, small: HA is on (every slave fences on a lost lease from now).
        h, m = pushed[0]
        assert (h, m.ha_config, m.ha_enabled, len(m.peers)) == (HOST, True, True, 0)
        await announcer.delivered()  # then the peers
        assert len(pushed) == 2
        assert [p.host_uuid for p in pushed[-1][1].peers] == [first.uuid]
        pushed.clear()
        late = await world.add_host("late")  # a new peer
        await announcer.delivered()
        assert len(pushed) == 1
        assert {p.host_uuid for p in pushed[0][1].peers} == {first.uuid, late.uuid}
        pushed.clear()
        await world.add_vm("v")  # VMs do not change what slaves are told
        await world.store.put(copy_with(late, enabled=False))  # nor a host's other fields
        await pool_ha.configure(True, 1)  # nor HA settings the slaves do not use
        await announcer.delivered()
        assert pushed == []
        await pool_ha.configure(False, 0)
        assert [(m.ha_enabled, len(m.peers)) for _, m in pushed] == [(False, 0)]
    run(body, tmp_path)


def test_a_burst_of_joins_is_one_delivery_not_one_per_join(tmp_path):
    async def body(world: World):
        sessions, announcer, pushed = wired(world)
        open_streams = [f"00000000-0000-4000-8000-{i:012d}" for i in range(50)]
        announcer.open_hosts = lambda: open_streams
        await PoolHa(world.store, world.liveness).configure(True, 0)
        await announcer.delivered()
        pushed.clear()
        # Twenty hosts join while the loop is busy elsewhere (their commits'
        # changes arrive back to back): one list per stream, not twenty.
        joins = [dm.Host(uuid=f"22222222-0000-4000-8000-{i:012d}", address=f"10.0.1.{i}:1")
                 for i in range(20)]
        for i, host in enumerate(joins):
            announcer.on_changes([Change(i + 1000, "ADD", "host", host.uuid, host)])
        await announcer.delivered()
        assert sorted(h for h, _ in pushed) == sorted(open_streams)
        assert all(len(m.peers) == 20 for _, m in pushed)
        assert announcer.fence_after(open_streams[0]) == 10.0
    run(body, tmp_path)


def test_no_peers_to_a_stream_between_its_hello_and_its_answer(tmp_path):
    async def body(world: World):
        sessions, announcer, pushed = wired(world)
        announcer.open_hosts = lambda: [HOST]  # its old stream, still open
        await world.add_host("other")
        await PoolHa(world.store, world.liveness).configure(True, 0)
        await announcer.delivered()
        pushed.clear()
        announcer.keep(HOST, pb.Hello(host_uuid=HOST, fence_after_ms=20_000))
        await world.add_host("joins meanwhile")
        await announcer.delivered()
        assert pushed == []  # the old stream is about to be replaced
        announcer.fill(HOST, pb.HeartbeatResponse())
        await announcer.delivered()
        assert [(h, m.fence_after_ms, len(m.peers)) for h, m in pushed] == [(HOST, 20_000, 2)]
    run(body, tmp_path)


def test_peer_list_encodes_each_host_once_and_leaves_one_out():
    peers = PeerList()
    assert peers.set("b", "10.0.0.2:1") and peers.set("a", "10.0.0.1:1")
    assert not peers.set("a", "10.0.0.1:1")  # unchanged
    assert peers.set("c", "10.0.0.3:1") and peers.set("c", "")  # joined, then gone
    assert peers.set("a", "10.0.0.9:1")  # moved
    decoded = pb.HeartbeatResponse.FromString(peers.without("b"))
    assert [(p.host_uuid, p.address) for p in decoded.peers] == [("a", "10.0.0.9:1")]
    decoded = pb.HeartbeatResponse.FromString(peers.without("nobody"))
    assert [p.host_uuid for p in decoded.peers] == ["a", "b"]
    assert len(peers) == 2


def test_streams_without_peers_are_served_before_stale_ones(tmp_path):
    async def body(world: World):
        sessions, announcer, pushed = wired(world)
        old, new = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
        streams = [old]
        announcer.open_hosts = lambda: streams
        await world.add_host("other")
        await PoolHa(world.store, world.liveness).configure(True, 0)
        await announcer.delivered()
        streams.append(new)  # opened; and the peers changed since `old` had them
        host = dm.Host(uuid="22222222-0000-4000-8000-000000000000", address="10.0.1.1:1")
        announcer.on_changes([Change(1000, "ADD", "host", host.uuid, host)])
        assert announcer._stale() == [new, old]
    run(body, tmp_path)


def test_a_new_leader_knows_the_lease_of_a_host_that_has_not_said_hello_to_it(tmp_path):
    async def body(world: World):
        sessions, _, _ = wired(world)
        await sessions.hello(pb.Hello(host_uuid=HOST, address="10.0.0.1:9",
                                      fence_after_ms=30_000))
        assert world.store.get("host", HOST).fence_after_ms == 30_000  # durable
        _, successor, _ = wired(world)  # another master, same store, no Hello yet
        assert successor.fence_after(HOST) == 30.0
        assert successor.fence_after("22222222-2222-4222-8222-222222222222") == 10.0
    run(body, tmp_path)


def test_a_slave_whose_channel_notices_us_late_gets_a_longer_lease(tmp_path):
    """Its first stream was built before it heard our interval: the floor is
    dead_after + the slave's own transport bound when that is the larger."""
    async def body(world: World):
        sessions, announcer, _ = wired(world)
        _, answer = await sessions.hello(pb.Hello(host_uuid=HOST, address="10.0.0.1:9",
                                                  fence_after_ms=5000,
                                                  transport_bound_ms=3000))
        assert answer.fence_after_ms == 7000  # dead_after 3 + the slave's 3 + 1
    run(body, tmp_path)
