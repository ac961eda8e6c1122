"""The leader's restarter over a real store, Lifecycle with a scripted
forwarder and an injected clock: when a lost host's VMs restart, in what
order, never without quorum or with HA off, and across a leader change."""

from __future__ import annotations

from tests.master.test_lifecycle import lifecycle
from tests.master.test_pool_ha import protected
from tests.master.world import GIB, World, run
from xcp_control.errors import XcpError
from xcp_control.lease import hold_bound
from xcp_control.master.ha_restart import PROOF_RETRY, Restarter, fenced_by
from xcp_control.master.pool_ha import PoolHa
from xcp.v1 import datamodel_pb2 as dm

FENCE_AFTER, DETECT, TRANSPORT = 4.0, 1.0, 1.5


class Clock:
    now = 500.0

    def __call__(self) -> float:
        return self.now


class Proof:
    """The quorum proof (ha_quorum.py), scripted: what it was asked, what it says."""

    def __init__(self) -> None:
        self.holds_now = True
        self.asked: list[tuple[dict, set[str], float]] = []

    async def proven(self, lists, lost, needed) -> set[str]:
        self.asked.append((dict(lists), set(lost), needed))
        return set(lists) if self.holds_now else set()


WITNESSES = ("w1", "w2", "w3")  # what every host may hold, as the rig says


async def rig(world: World, enabled=True, hosts=3, proof=None, armed=True):
    """A restarter whose hosts acknowledged HA on (armed) unless told not."""
    life, fwd = lifecycle(world)
    ha = world.pool.plan = PoolHa(world.store, world.liveness)
    await ha.configure(enabled, 0)
    clock = Clock()
    not_armed: set[str] = set()
    restarter = Restarter(world.store, world.liveness, ha, life, lambda h: FENCE_AFTER,
                          DETECT, clock, proof=proof or Proof(), transport_bound=TRANSPORT,
                          may_hold=lambda h: [WITNESSES],
                          armed=lambda h: h not in not_armed)
    world.liveness.add_listener(restarter.on_flip)
    world.store.add_listener(restarter.on_changes)
    added = [await world.add_host(f"h{i}") for i in range(hosts)]
    if not armed:
        not_armed.update(h.uuid for h in added)
    restarter.not_armed = not_armed  # the test may arm or disarm
    return restarter, fwd, clock, added


def state(world, vm):
    got = world.store.get("vm", vm.uuid)
    return got.power_state, got.resident_on, got.ha_restart_pending


def test_restart_after_the_lease_in_order_then_best_effort(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world)
        late = await protected(world, "late", GIB, dm.RUNNING, h0.uuid)
        late.ha_restart_order = 2
        await world.store.put(late)
        first = await protected(world, "first", GIB, dm.RUNNING, h0.uuid)
        best = await protected(world, "best", GIB, dm.RUNNING, h0.uuid,
                               priority=dm.BEST_EFFORT)
        plain = await protected(world, "plain", GIB, dm.RUNNING, h0.uuid, priority=0)
        lost_at = clock.now
        world.liveness.mark_down(h0.uuid)
        clock.now = fenced_by(lost_at, FENCE_AFTER, DETECT) - 0.01
        await restarter.step()
        assert state(world, first) == (dm.RUNNING, h0.uuid, False) and fwd.calls == []
        clock.now += 0.02
        await restarter.step()
        started = [c for c in fwd.calls if c[1] == "StartDomain"]
        assert len(started) == 3 and h0.uuid not in {h for h, _ in started}
        for vm in (first, late, best):
            power, on, pending = state(world, vm)
            assert power == dm.RUNNING and on in (h1.uuid, h2.uuid) and not pending
        assert state(world, plain) == (dm.HALTED, "", False)
        await restarter.step()
        assert len(fwd.calls) == 3  # never twice
    run(body, tmp_path)


def test_no_quorum_no_restart(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        world.liveness.mark_down(h0.uuid)
        world.liveness.mark_down(h1.uuid)
        clock.now += 60
        await restarter.step()
        assert state(world, vm) == (dm.RUNNING, h0.uuid, False) and fwd.calls == []
    run(body, tmp_path)


def test_ha_disabled_restarts_nothing(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world, enabled=False)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        world.liveness.mark_down(h0.uuid)
        await world.pool.plan.configure(True, 0)  # enabled after the loss: still nothing
        clock.now += 60
        await restarter.step()
        assert state(world, vm) == (dm.RUNNING, h0.uuid, False) and fwd.calls == []
    run(body, tmp_path)


def test_declare_dead_restarts_at_once_and_failures_back_off(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        fwd.failure = XcpError("HOST_OFFLINE", host="x")
        await world.pool.declare_dead(h0.uuid)
        assert state(world, vm) == (dm.HALTED, "", True)
        await restarter.step()
        assert len(fwd.calls) == 1 and state(world, vm)[2]
        await restarter.step()
        assert len(fwd.calls) == 1  # backing off
        fwd.failure = None
        clock.now += 1.0
        await restarter.step()
        assert state(world, vm)[0] == dm.RUNNING and not state(world, vm)[2]
    run(body, tmp_path)


def test_a_new_leader_restarts_what_was_marked_and_treats_lost_hosts_as_lost(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world)
        marked = await protected(world, "marked", GIB)
        marked.ha_restart_pending = True
        await world.store.put(marked)
        on_dead = await protected(world, "on-dead", GIB, dm.RUNNING, h0.uuid)
        world.liveness.mark_down(h0.uuid)
        restarter.lost.clear()  # as a master that was not leading when h0 went
        restarter.lead()
        await restarter.step()
        assert state(world, marked)[0] == dm.RUNNING
        assert state(world, on_dead) == (dm.RUNNING, h0.uuid, False)  # lease not out yet
        clock.now += 10
        await restarter.step()
        assert state(world, on_dead)[0] == dm.RUNNING and state(world, on_dead)[1] != h0.uuid
    run(body, tmp_path)


def test_best_effort_only_where_room_remains(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world)
        for host, used in ((h1, 20), (h2, 30)):  # 44 and 34 GiB free
            await protected(world, f"fill-{used}", used * GIB, dm.RUNNING, host.uuid, priority=0)
        big = await protected(world, "big", 40 * GIB, dm.RUNNING, h0.uuid)
        extra = await protected(world, "extra", 40 * GIB, dm.RUNNING, h0.uuid,
                                priority=dm.BEST_EFFORT)
        lost_at = clock.now
        world.liveness.mark_down(h0.uuid)
        clock.now = fenced_by(lost_at, FENCE_AFTER, DETECT) + 0.01
        await restarter.step()
        assert state(world, big) == (dm.RUNNING, h1.uuid, False)  # the one host with room
        # No host has 40 GiB left: the BEST_EFFORT VM waits, HALTED and marked.
        assert state(world, extra) == (dm.HALTED, "", True)
        assert [m for _, m in fwd.calls] == ["StartDomain"]
        clock.now += 0.5
        await restarter.step()  # backing off: not even tried
        assert len(fwd.calls) == 1
    run(body, tmp_path)


def test_nothing_restarts_until_a_majority_vouches_for_the_hold_bound(tmp_path):
    async def body(world: World):
        proof = Proof()
        restarter, fwd, clock, (h0, h1, h2) = await rig(world, proof=proof)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        lost_at = clock.now
        world.liveness.mark_down(h0.uuid)
        clock.now = fenced_by(lost_at, FENCE_AFTER, DETECT) + 0.01
        proof.holds_now = False
        await restarter.step()
        assert state(world, vm) == (dm.RUNNING, h0.uuid, False) and fwd.calls == []
        lists, lost, needed = proof.asked[-1]
        assert lists == {h0.uuid: [WITNESSES]} and lost == {h0.uuid}
        assert needed == hold_bound(FENCE_AFTER, TRANSPORT, DETECT)
        proof.holds_now = True
        clock.now += PROOF_RETRY / 2  # a failed proof is not asked again at once
        await restarter.step()
        assert len(proof.asked) == 1 and fwd.calls == []
        clock.now += PROOF_RETRY
        await restarter.step()
        assert len(proof.asked) == 2
        assert state(world, vm)[0:2] != (dm.RUNNING, h0.uuid)
        assert [c for c in fwd.calls if c[1] == "StartDomain"]
    run(body, tmp_path)


def test_hosts_only_restored_for_the_grace_make_no_quorum(tmp_path):
    async def body(world: World):
        proof = Proof()
        restarter, fwd, clock, (h0, h1, h2) = await rig(world, proof=proof)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        # A restarted master: all three restored as live, only h0 lost later.
        world.liveness.restore([(h.uuid, True) for h in (h1, h2)], clock.now)
        world.liveness.mark_down(h0.uuid)
        clock.now += 60
        await restarter.step()
        assert state(world, vm) == (dm.RUNNING, h0.uuid, False) and proof.asked == []
    run(body, tmp_path)


def test_a_host_back_from_a_fence_has_its_protected_vms_restarted(tmp_path):
    """No majority while it was away, so nobody failed it; its Hello says it
    fenced: its VMs died with it, the protected ones restart."""
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        plain = await protected(world, "plain", GIB, dm.RUNNING, h0.uuid, priority=0)
        await restarter.host_fenced(h0.uuid)
        assert state(world, vm) == (dm.HALTED, "", True)
        assert state(world, plain) == (dm.HALTED, "", False)
        await restarter.step()
        assert state(world, vm)[0] == dm.RUNNING and not state(world, vm)[2]
    run(body, tmp_path)


def test_with_ha_off_a_fenced_hello_changes_nothing(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world, enabled=False)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        await restarter.host_fenced(h0.uuid)
        assert state(world, vm) == (dm.RUNNING, h0.uuid, False)
    run(body, tmp_path)


def test_a_host_that_never_acknowledged_ha_is_not_restarted(tmp_path):
    """Lost just as HA was switched on, before it heard: it may not fence, so
    its VMs stay where the store has them; DeclareDead still restarts them."""
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2) = await rig(world, armed=False)
        vm = await protected(world, "v", GIB, dm.RUNNING, h0.uuid)
        lost_at = clock.now
        world.liveness.mark_down(h0.uuid)
        clock.now = fenced_by(lost_at, FENCE_AFTER, DETECT) + 60
        await restarter.step()
        assert state(world, vm) == (dm.RUNNING, h0.uuid, False) and fwd.calls == []
        assert h0.uuid not in restarter.lost  # dropped, not retried every tick
        await world.pool.declare_dead(h0.uuid)  # the operator asserts the fence
        await restarter.step()
        assert state(world, vm)[0] == dm.RUNNING and state(world, vm)[1] != h0.uuid
    run(body, tmp_path)


def test_an_armed_host_is_restarted_beside_one_that_is_not(tmp_path):
    async def body(world: World):
        restarter, fwd, clock, (h0, h1, h2, h3, h4) = await rig(world, hosts=5)
        restarter.not_armed.add(h1.uuid)
        heard = await protected(world, "heard", GIB, dm.RUNNING, h0.uuid)
        unheard = await protected(world, "unheard", GIB, dm.RUNNING, h1.uuid)
        lost_at = clock.now
        world.liveness.mark_down(h0.uuid)
        world.liveness.mark_down(h1.uuid)
        clock.now = fenced_by(lost_at, FENCE_AFTER, DETECT) + 0.01
        await restarter.step()
        assert state(world, heard)[1] in (h2.uuid, h3.uuid, h4.uuid)
        assert state(world, unheard) == (dm.RUNNING, h1.uuid, False)
    run(body, tmp_path)
