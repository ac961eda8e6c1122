"""The HA config the leader gives slaves on their heartbeat streams: in the
Hello answer (HeartbeatSessions.hello), pushed on a pool or host change."""

from __future__ import annotations

from tests.master.world import NOW, World, run
from xcp_control.master.ha_config import HaAnnouncer
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.sessions import HeartbeatSessions
from xcp.v1 import liveness_service_pb2 as pb

HOST = "11111111-1111-4111-8111-111111111111"


def wired(world: World) -> tuple[HeartbeatSessions, HaAnnouncer, list]:
    pool_ha = PoolHa(world.store, world.liveness)
    announcer = HaAnnouncer(world.store, pool_ha, detect_bound=3.0, transport_bound=0.5)
    pushed: list[tuple[str, pb.HeartbeatResponse]] = []
    announcer.push = lambda host, message: pushed.append((host, message))
    world.store.add_listener(announcer.on_changes)
    mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW, write_interval=30.0)
    sessions = HeartbeatSessions(world.store, world.liveness, mirror, 1.0, clock=lambda: NOW)
    sessions.ha = announcer
    return sessions, announcer, pushed


def test_hello_answer_carries_the_config_and_the_peers(tmp_path):
    async def body(world: World):
        sessions, announcer, _ = wired(world)
        other = await world.add_host("other")
        _, answer = await sessions.hello(pb.Hello(host_uuid=HOST, name_label="h",
                                                  address="10.0.0.1:9", fence_after_ms=4000))
        assert answer.ha_config and not answer.ha_enabled
        assert (answer.fence_after_ms, answer.detect_bound_ms) == (4000, 3000)
        assert [(p.host_uuid, p.address) for p in answer.peers] == [
            (other.uuid, other.address)]  # not itself
        assert announcer.fence_after(HOST) == 4.0
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
        await PoolHa(world.store, world.liveness).configure(True, 0)
        assert [(h, m.ha_config, m.ha_enabled) for h, m in pushed] == [(HOST, True, True)]
        pushed.clear()
        await world.add_host("late")  # a new peer
        assert pushed and pushed[-1][1].peers
        pushed.clear()
        await world.add_vm("v")  # VMs do not change what slaves are told
        assert pushed == []
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
