"""The pool's HA settings and the failover plan's checks, wired into StartVM
(Lifecycle) and UpdateVM (Pool): a real SQLite store, a scripted forwarder."""

from __future__ import annotations

from tests.master.test_lifecycle import lifecycle, reason
from tests.master.world import GIB, World, new_uuid, run
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.sqlite_store import SqliteStore
from xcp.v1 import datamodel_pb2 as dm


async def protected(world: World, name: str, memory: int, state=dm.HALTED, on="",
                    priority=dm.RESTART) -> dm.VM:
    vm = dm.VM(uuid=new_uuid(), name_label=name, power_state=state, resident_on=on,
               memory=memory, vcpus=1, ha_restart_priority=priority)
    await world.store.put(vm)
    return vm


async def two_hosts_one_big_vm(world: World) -> tuple[PoolHa, dm.Host, dm.Host, dm.VM]:
    """Two 64 GiB hosts, a RESTART VM of 40 GiB on the first: the plan
    survives one failure (the second host can take it), not a second VM."""
    ha = world.pool.plan = PoolHa(world.store, world.liveness)
    h1, h2 = await world.add_host("h1"), await world.add_host("h2")
    big = await protected(world, "big", 40 * GIB, dm.RUNNING, h1.uuid)
    await ha.configure(True, 1)
    assert ha.plan_exists_for() == 1
    return ha, h1, h2, big


def test_settings_are_durable_and_described(tmp_path):
    async def body(world: World):
        ha = PoolHa(world.store, world.liveness)
        assert not ha.enabled and ha.settings().uuid == world.store.db_id
        await ha.configure(True, 2)
        pool = dm.Pool()
        ha.describe(pool)
        assert (pool.ha_enabled, pool.ha_host_failures_to_tolerate) == (True, 2)
        assert await reason(ha.configure(True, -1)) == "INVALID_VALUE"
        assert await reason(ha.configure(True, 1001)) == "INVALID_VALUE"
        assert ha.settings().ha_host_failures_to_tolerate == 2  # refused: unchanged
        reopened = await SqliteStore(str(tmp_path / "pool.db")).open()
        try:
            stored = reopened.get("pool", reopened.db_id)
            assert (stored.ha_enabled, stored.ha_host_failures_to_tolerate) == (True, 2)
        finally:
            await reopened.close()
    run(body, tmp_path)


def test_start_that_breaks_the_plan_is_refused_before_forwarding(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        ha, h1, h2, big = await two_hosts_one_big_vm(world)
        second = await protected(world, "second", 40 * GIB)
        assert await reason(life.start_vm(second.uuid, "", False, None)) == \
            "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
        assert fwd.calls == [] and world.store.get("vm", second.uuid).power_state == dm.HALTED
        # HA's own restarts are what the plan is for: never refused by it.
        started = await life.start_vm(second.uuid, "", False, None, ha_restart=True)
        assert started.power_state == dm.RUNNING and len(fwd.calls) == 1
        # An unprotected VM does not count: it starts.
        small = await protected(world, "small", 4 * GIB, priority=0)
        assert (await life.start_vm(small.uuid, "", False, None)).power_state == dm.RUNNING
    run(body, tmp_path)


def test_no_check_when_disabled_or_nothing_to_tolerate(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        ha, h1, h2, big = await two_hosts_one_big_vm(world)
        await ha.configure(True, 0)
        second = await protected(world, "second", 40 * GIB)
        assert (await life.start_vm(second.uuid, "", False, None)).power_state == dm.RUNNING
        await ha.configure(False, 1)
        third = await protected(world, "third", 20 * GIB)
        assert (await life.start_vm(third.uuid, "", False, None)).power_state == dm.RUNNING
    run(body, tmp_path)


def test_update_that_protects_a_vm_the_plan_cannot_cover_is_refused(tmp_path):
    async def body(world: World):
        ha, h1, h2, big = await two_hosts_one_big_vm(world)
        # h1: big (40, RESTART) + 10 unprotected, 14 free; h2: other (20), 44 free.
        await protected(world, "filler", 10 * GIB, dm.RUNNING, h1.uuid, priority=0)
        other = await protected(world, "other", 20 * GIB, dm.RUNNING, h2.uuid, priority=0)
        assert ha.plan_exists_for() == 1
        change = dm.VM(uuid=other.uuid, ha_restart_priority=dm.RESTART)
        assert await reason(world.pool.update_vm(change, ["ha_restart_priority"])) == \
            "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
        assert world.store.get("vm", other.uuid).ha_restart_priority == 0
        # BEST_EFFORT is not planned for; the order alone never changes the plan.
        change.ha_restart_priority = dm.BEST_EFFORT
        updated = await world.pool.update_vm(change, ["ha_restart_priority"])
        assert updated.ha_restart_priority == dm.BEST_EFFORT
        order = dm.VM(uuid=big.uuid, ha_restart_order=5)
        assert (await world.pool.update_vm(order, ["ha_restart_order"])).ha_restart_order == 5
    run(body, tmp_path)
