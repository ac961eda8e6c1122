import asyncio

from tests.master.world import World, run as run_world
from xcp_control.master.locks import OperationLocks
from xcp_control.master.reconcile import SETTLE, Reconciler, plan
from xcp.v1 import datamodel_pb2 as dm, slave_service_pb2 as sl

H, OTHER = "host-1", "host-2"


def vm(uuid, state=dm.RUNNING, host=H):
    return dm.VM(uuid=uuid, power_state=state, resident_on=host if state != dm.HALTED else "")


def dom(uuid, state=dm.RUNNING):
    return sl.Domain(vm_uuid=uuid, state=state)


def run(domains, vms, busy=()):
    table = {v.uuid: v for v in vms}
    resident = [v for v in vms if v.resident_on == H]
    return plan(H, domains, resident, table.get, lambda u: u in busy)


def test_in_step_means_nothing_to_do():
    result = run([dom("a"), dom("b", dm.PAUSED)], [vm("a"), vm("b", dm.PAUSED)])
    assert not result and result.skipped == []


def test_domain_gone_or_halted_on_its_own_halts_the_vm():
    result = run([dom("b", dm.HALTED)], [vm("a"), vm("b")])
    assert sorted((v.uuid, v.power_state, v.resident_on) for v in result.records) == [
        ("a", dm.HALTED, ""), ("b", dm.HALTED, "")]
    assert result.destroy == []


def test_state_drift_takes_the_hosts_state():
    result = run([dom("a", dm.PAUSED)], [vm("a")])
    assert [(v.uuid, v.power_state, v.resident_on) for v in result.records] == [
        ("a", dm.PAUSED, H)]


def test_domain_of_a_vm_running_elsewhere_halted_or_unknown_is_destroyed():
    vms = [vm("elsewhere", host=OTHER), vm("halted", dm.HALTED)]
    result = run([dom("elsewhere"), dom("halted"), dom("unknown")], vms)
    assert sorted(result.destroy) == ["elsewhere", "halted", "unknown"]
    assert result.records == []


def test_busy_vms_are_left_to_their_operation():
    result = run([dom("starting")], [vm("starting", dm.HALTED), vm("stopping")],
                 busy={"starting", "stopping"})
    assert not result
    assert sorted(result.skipped) == ["starting", "stopping"]


def test_a_report_older_than_a_vms_last_operation_leaves_that_vm_alone(tmp_path):
    """A domain list built before a StartVM's domain existed, reconciled after
    the start committed, must not halt the VM nor destroy its fresh domain: the
    VM is skipped and the next report asked for; a report from after the start
    settles it."""
    async def body(world: World):
        now = [100.0]
        locks = OperationLocks(lambda: now[0])
        destroyed, asked = [], []

        async def destroy(host, vm):
            destroyed.append(vm)
        reconciler = Reconciler(world.store, locks, destroy, asked.append, lambda: now[0])
        host = await world.add_host("h1")
        vm = await world.add_vm("v", dm.RUNNING, host.uuid)
        with locks.hold("vm", vm.uuid, "start"):
            now[0] += 0.2
        reconciler.on_domains(host.uuid, [])  # built before the boot had ended
        await drained(reconciler)
        assert world.store.get("vm", vm.uuid).power_state == dm.RUNNING and asked == [host.uuid]
        now[0] += SETTLE + 0.1
        reconciler.on_domains(host.uuid, [])  # the domain really is gone now
        await drained(reconciler)
        assert world.store.get("vm", vm.uuid).power_state == dm.HALTED and destroyed == []
    run_world(body, tmp_path)


async def drained(reconciler: Reconciler) -> None:
    """Wait for the reports handed over so far to be reconciled."""
    await asyncio.gather(*list(reconciler._tasks))
