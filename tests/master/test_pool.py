"""Pool: VM records, host reads, ForgetHost and DeclareDead over a real store.
No network, no sleeping: Liveness is driven with fixed `now` readings."""

from __future__ import annotations

import uuid as uuid_module

import pytest

from tests.master.world import GIB, NOW, World, listed, new_uuid, run
from xcp_control.errors import XcpError
from xcp.v1 import datamodel_pb2 as dm


def reason_of(exc_info) -> str:
    return exc_info.value.reason


# -- VMs ------------------------------------------------------------------------------


def test_create_vm_stores_a_halted_vm(tmp_path):
    async def body(w: World):
        vm = await w.pool.create_vm("web", 2 * GIB, 2, "", {"k": "v"})
        assert w.store.get("vm", vm.uuid) == vm
        assert vm.power_state == dm.HALTED and vm.resident_on == ""
        assert (vm.name_label, vm.memory, vm.vcpus, dict(vm.other_config)) == (
            "web", 2 * GIB, 2, {"k": "v"})
        assert str(uuid_module.UUID(vm.uuid)) == vm.uuid
        other = await w.pool.create_vm("web", GIB, 1, "", {})
        assert other.uuid != vm.uuid  # names need not be unique, uuids are
        assert w.pool.vm(vm.uuid) == vm
        assert w.pool.vm(vm.uuid.upper()) == vm  # uuids are case-insensitive
    run(body, tmp_path)


@pytest.mark.parametrize("args, field", [
    (("", GIB, 1, "", {}), "name_label"),
    (("x" * 256, GIB, 1, "", {}), "name_label"),
    (("web", 0, 1, "", {}), "memory"),
    (("web", -GIB, 1, "", {}), "memory"),
    (("web", GIB, 0, "", {}), "vcpus"),
    (("web", GIB, 100_000, "", {}), "vcpus"),
    (("web", GIB, 1, "not-a-uuid", {}), "affinity"),
    (("web", GIB, 1, "", {"": "v"}), "other_config."),
])
def test_create_vm_refuses_bad_input(tmp_path, args, field):
    async def body(w: World):
        with pytest.raises(XcpError) as caught:
            await w.pool.create_vm(*args)
        assert reason_of(caught) == "INVALID_VALUE"
        assert caught.value.params["field"].startswith(field)
        assert w.store.list("vm") == [] and w.store.generation == 0
    run(body, tmp_path)


def test_create_vm_affinity_must_name_a_host(tmp_path):
    async def body(w: World):
        missing = new_uuid()
        with pytest.raises(XcpError) as caught:
            await w.pool.create_vm("web", GIB, 1, missing, {})
        assert reason_of(caught) == "HANDLE_INVALID"
        assert caught.value.params == {"class": "host", "uuid": missing}
        host = await w.add_host("h1")
        vm = await w.pool.create_vm("web", GIB, 1, host.uuid.upper(), {})
        assert vm.affinity == host.uuid
    run(body, tmp_path)


def test_get_vm_errors(tmp_path):
    async def body(w: World):
        with pytest.raises(XcpError) as caught:
            w.pool.vm("nope")
        assert reason_of(caught) == "INVALID_VALUE"
        missing = new_uuid()
        with pytest.raises(XcpError) as caught:
            w.pool.vm(missing)
        assert reason_of(caught) == "HANDLE_INVALID"
        assert caught.value.params == {"class": "vm", "uuid": missing}
    run(body, tmp_path)


def test_list_vms_filters(tmp_path):
    async def body(w: World):
        h1, h2 = await w.add_host("h1"), await w.add_host("h2")
        r1 = await w.add_vm("r1", dm.RUNNING, h1.uuid)
        p1 = await w.add_vm("p1", dm.PAUSED, h1.uuid)
        r2 = await w.add_vm("r2", dm.RUNNING, h2.uuid)
        halted = await w.add_vm("off")

        def uuids(host="", state=dm.POWER_STATE_UNSPECIFIED):
            return [vm.uuid for vm in w.pool.list_vms(host, state)[0]]

        assert uuids() == sorted(v.uuid for v in (r1, p1, r2, halted))  # ordered by uuid
        assert uuids(h1.uuid) == sorted([r1.uuid, p1.uuid])
        assert uuids(h1.uuid.upper()) == sorted([r1.uuid, p1.uuid])
        assert uuids(h1.uuid, dm.RUNNING) == [r1.uuid]
        assert uuids(h2.uuid, dm.PAUSED) == []
        assert uuids(state=dm.RUNNING) == sorted([r1.uuid, r2.uuid])
        assert uuids(state=dm.HALTED) == [halted.uuid]
        assert uuids(new_uuid()) == []
        for host, state, field in (("bad", 0, "host"), ("", 42, "power_state"),
                                   ("", -1, "power_state")):
            with pytest.raises(XcpError) as caught:
                w.pool.list_vms(host, state)
            assert caught.value.params["field"] == field
    run(body, tmp_path)


def test_destroy_vm(tmp_path):
    async def body(w: World):
        host = await w.add_host("h1")
        off = await w.add_vm("off")
        running = await w.add_vm("on", dm.RUNNING, host.uuid)
        await w.pool.destroy_vm(off.uuid)
        assert w.store.get("vm", off.uuid) is None
        with pytest.raises(XcpError) as caught:
            await w.pool.destroy_vm(off.uuid)
        assert reason_of(caught) == "HANDLE_INVALID"
        with pytest.raises(XcpError) as caught:
            await w.pool.destroy_vm(running.uuid)
        assert reason_of(caught) == "VM_BAD_POWER_STATE"
        assert caught.value.params == {"vm": running.uuid, "expected": "HALTED",
                                       "actual": "RUNNING"}
        assert w.store.get("vm", running.uuid) is not None
    run(body, tmp_path)


def test_destroy_vm_while_another_operation_runs(tmp_path):
    async def body(w: World):
        vm = await w.add_vm("busy")
        with w.locks.hold("vm", vm.uuid, "start"):
            with pytest.raises(XcpError) as caught:
                await w.pool.destroy_vm(vm.uuid)
        assert reason_of(caught) == "OTHER_OPERATION_IN_PROGRESS"
        assert caught.value.params == {"class": "vm", "uuid": vm.uuid, "operation": "start"}
        await w.pool.destroy_vm(vm.uuid)  # the lock was released
        assert w.locks.current("vm", vm.uuid) is None
    run(body, tmp_path)


# -- hosts ----------------------------------------------------------------------------


def test_list_hosts_ordered_with_live_metrics(tmp_path):
    async def body(w: World):
        b = await w.add_host("b")
        a = await w.add_host("a", live=False)
        pairs = listed(w)
        assert [h.uuid for h, _ in pairs] == [a.uuid, b.uuid]
        assert [(m.host, m.live) for _, m in pairs] == [(a.uuid, False), (b.uuid, True)]
        assert w.pool.host_metrics(b.uuid).live is True
        w.liveness.reap(NOW + 3.0)  # exactly dead_after: still live
        assert w.pool.host_metrics(b.uuid).live is True
        assert w.liveness.reap(NOW + 3.01) == [b.uuid]
        assert w.pool.host_metrics(b.uuid).live is False  # memory, before any write
    run(body, tmp_path)


def test_host_lookup_errors(tmp_path):
    async def body(w: World):
        with pytest.raises(XcpError) as caught:
            w.pool.host("x")
        assert reason_of(caught) == "INVALID_VALUE"
        missing = new_uuid()
        with pytest.raises(XcpError) as caught:
            w.pool.host_metrics(missing)
        assert reason_of(caught) == "HANDLE_INVALID"
        assert caught.value.params == {"class": "host", "uuid": missing}
    run(body, tmp_path)


def test_forget_live_host_is_host_is_live(tmp_path):
    async def body(w: World):
        host = await w.add_host("h1")
        with pytest.raises(XcpError) as caught:
            await w.pool.forget_host(host.uuid)
        assert reason_of(caught) == "HOST_IS_LIVE"
        assert caught.value.params == {"host": host.uuid}
        assert w.store.get("host", host.uuid) is not None
    run(body, tmp_path)


def test_forget_dead_host_removes_it_and_halts_its_vms(tmp_path):
    async def body(w: World):
        gone, kept = await w.add_host("gone"), await w.add_host("kept")
        vm_gone = await w.add_vm("a", dm.RUNNING, gone.uuid)
        vm_kept = await w.add_vm("b", dm.RUNNING, kept.uuid)
        forgotten = []
        w.pool.add_forget_listener(forgotten.append)
        assert w.liveness.reap(NOW + 10) == [gone.uuid, kept.uuid]  # both silent
        w.liveness.beat(kept.uuid, NOW + 10)  # kept is live again
        await w.pool.forget_host(gone.uuid)
        assert w.store.get("host", gone.uuid) is None
        assert w.store.get("host_metrics", gone.metrics) is None
        assert forgotten == [gone.uuid]
        vm = w.store.get("vm", vm_gone.uuid)
        assert (vm.power_state, vm.resident_on) == (dm.HALTED, "")
        assert w.store.get("vm", vm_kept.uuid) == vm_kept
        assert [h.uuid for h, _ in listed(w)] == [kept.uuid]
        with pytest.raises(XcpError) as caught:
            await w.pool.forget_host(gone.uuid)
        assert reason_of(caught) == "HANDLE_INVALID"
    run(body, tmp_path)


def test_forget_host_that_never_beat(tmp_path):
    async def body(w: World):
        host = await w.add_host("stored-dead", live=False)
        await w.pool.forget_host(host.uuid)
        assert w.store.list("host") == []
    run(body, tmp_path)


def test_declare_dead(tmp_path):
    async def body(w: World):
        dead, other = await w.add_host("dead"), await w.add_host("other")
        running = await w.add_vm("r", dm.RUNNING, dead.uuid)
        paused = await w.add_vm("p", dm.PAUSED, dead.uuid)
        elsewhere = await w.add_vm("e", dm.RUNNING, other.uuid)
        flips = []
        w.liveness.add_listener(lambda host, live: flips.append((host, live)))
        returned = await w.pool.declare_dead(dead.uuid)
        assert returned.uuid == dead.uuid
        assert not w.liveness.is_live(dead.uuid) and w.liveness.is_live(other.uuid)
        assert flips == [(dead.uuid, False)]
        assert w.pool.host_metrics(dead.uuid).live is False
        for vm in (running, paused):
            now = w.store.get("vm", vm.uuid)
            assert (now.power_state, now.resident_on) == (dm.HALTED, "")
        assert w.store.get("vm", elsewhere.uuid) == elsewhere
        assert w.pool.list_vms(dead.uuid, 0) == ([], "")
        # Declaring a dead host dead again is harmless; then it can be forgotten.
        await w.pool.declare_dead(dead.uuid)
        assert flips == [(dead.uuid, False)]
        await w.pool.forget_host(dead.uuid)
        assert w.store.get("host", dead.uuid) is None
    run(body, tmp_path)


def test_declare_dead_unknown_host(tmp_path):
    async def body(w: World):
        with pytest.raises(XcpError) as caught:
            await w.pool.declare_dead(new_uuid())
        assert reason_of(caught) == "HANDLE_INVALID"
    run(body, tmp_path)


def test_declare_dead_while_host_is_busy(tmp_path):
    async def body(w: World):
        host = await w.add_host("h")
        with w.locks.hold("host", host.uuid, "forget"):
            with pytest.raises(XcpError) as caught:
                await w.pool.declare_dead(host.uuid)
        assert reason_of(caught) == "OTHER_OPERATION_IN_PROGRESS"
        assert w.liveness.is_live(host.uuid)
    run(body, tmp_path)


def test_list_vms_pages_in_uuid_order(tmp_path):
    async def body(w: World):
        made = sorted([(await w.add_vm(f"v{i}")).uuid for i in range(7)])
        pages, token = [], ""
        while True:
            vms, token = w.pool.list_vms("", 0, page_size=3, page_token=token)
            pages.append([vm.uuid for vm in vms])
            if not token:
                break
        assert pages == [made[0:3], made[3:6], made[6:7]]
        assert w.pool.list_vms("", 0, page_size=7)[1] == ""
        for bad in ({"page_size": -1}, {"page_token": "nope"}):
            with pytest.raises(XcpError) as err:
                w.pool.list_vms("", 0, **bad)
            assert err.value.reason == "INVALID_VALUE"
    run(body, tmp_path)
