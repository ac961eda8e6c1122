from xcp_control.master.reconcile import plan
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
