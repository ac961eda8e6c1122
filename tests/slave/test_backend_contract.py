"""The Hypervisor contract, run against both backends: the simulator and the
libvirt backend on libvirt's test driver (`test:///<private node XML>`: an
in-process hypervisor, no daemon, domains that boot at once). What only the
libvirt backend does (kernel checks, tags, adoption, lost connections) is in
test_libvirt_backend.py."""

from __future__ import annotations

import asyncio

import pytest

from xcp_control.model import HALTED, PAUSED, RUNNING
from xcp_control.slave.hypervisor import BootSpec, DomainInfo, SimulatedHypervisor

from tests.slave.libvirt_support import HOST, GiB, libvirt_hypervisor, needs_libvirt, raises

VM1 = "aaaaaaaa-0000-4000-8000-000000000001"
VM2 = "aaaaaaaa-0000-4000-8000-000000000002"


@pytest.fixture(params=["simulated", pytest.param("libvirt", marks=needs_libvirt)])
def make(request, tmp_path):
    """make(memory) -> an opened backend (`run` closes it)."""
    async def factory(memory: int = 4 * GiB):
        if request.param == "simulated":
            return SimulatedHypervisor(HOST, memory)
        return await libvirt_hypervisor(tmp_path, memory)
    return factory


@pytest.fixture
def boot(tmp_path) -> BootSpec:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    return BootSpec(str(kernel), "", "console=ttyS0")


def run(make, body):
    """Run body(hv_factory) in one loop, closing every backend it opened."""
    async def go():
        opened = []

        async def new(memory: int = 4 * GiB):
            hv = await make(memory)
            opened.append(hv)
            return hv
        try:
            await body(new)
        finally:
            for hv in opened:
                await hv.close()
    asyncio.run(go())


def test_start_lists_domain_and_accounts_memory(make, boot):
    async def body(new):
        hv = await new()
        d = await hv.start(VM1, GiB, 2, boot=boot)
        assert d == DomainInfo(VM1, RUNNING, GiB, 2)
        assert await hv.list_domains() == [d]
        assert hv.memory_total == 4 * GiB
        assert hv.memory_free == 3 * GiB
    run(make, body)


def test_start_paused_and_list_ordered_by_uuid(make, boot):
    async def body(new):
        hv = await new()
        await hv.start(VM2, GiB, 1, boot=boot)
        d1 = await hv.start(VM1, GiB, 1, paused=True, boot=boot)
        assert d1.state == PAUSED
        assert [(d.vm_uuid, d.state) for d in await hv.list_domains()] == [
            (VM1, PAUSED), (VM2, RUNNING)]
    run(make, body)


def test_full_lifecycle(make, boot):
    async def body(new):
        hv = await new()
        changes = []
        hv.add_listener(lambda: changes.append(1))
        await hv.start(VM1, GiB, 1, boot=boot)
        assert (await hv.pause(VM1)).state == PAUSED
        assert (await hv.unpause(VM1)).state == RUNNING
        assert (await hv.reboot(VM1)).state == RUNNING
        assert (await hv.reboot(VM1, force=True)).state == RUNNING
        halted = await hv.shutdown(VM1)
        assert (halted.vm_uuid, halted.state) == (VM1, HALTED)
        assert await hv.list_domains() == []
        assert hv.memory_free == hv.memory_total
        assert len(changes) >= 4  # start, pause, unpause, shutdown
    run(make, body)


def test_hard_shutdown_of_paused_domain(make, boot):
    async def body(new):
        hv = await new()
        await hv.start(VM1, GiB, 1, paused=True, boot=boot)
        assert (await hv.shutdown(VM1, force=True)).state == HALTED
        assert await hv.list_domains() == []
    run(make, body)


def test_memory_is_accounted_and_freed(make, boot):
    async def body(new):
        hv = await new(memory=2 * GiB)
        await hv.start(VM1, GiB, 1, boot=boot)
        await raises("HOST_NOT_ENOUGH_FREE_MEMORY", hv.start(VM2, GiB + 1, 1, boot=boot),
                     vm=VM2, host=HOST)
        assert [d.vm_uuid for d in await hv.list_domains()] == [VM1]
        await hv.shutdown(VM1)
        await hv.start(VM2, 2 * GiB, 1, boot=boot)
        assert hv.memory_free == 0
    run(make, body)


def test_wrong_power_states(make, boot):
    async def body(new):
        hv = await new()
        await hv.start(VM1, GiB, 1, boot=boot)
        await raises("VM_BAD_POWER_STATE", hv.start(VM1, GiB, 1, boot=boot),
                     vm=VM1, expected="HALTED", actual="RUNNING")
        await raises("VM_BAD_POWER_STATE", hv.unpause(VM1), expected="PAUSED", actual="RUNNING")
        await hv.pause(VM1)
        await raises("VM_BAD_POWER_STATE", hv.pause(VM1), expected="RUNNING", actual="PAUSED")
        await raises("VM_BAD_POWER_STATE", hv.reboot(VM1), expected="RUNNING", actual="PAUSED")
    run(make, body)


def test_unknown_domain(make, boot):
    async def body(new):
        hv = await new()
        for op in (hv.shutdown(VM1), hv.reboot(VM1), hv.pause(VM1), hv.unpause(VM1)):
            await raises("HANDLE_INVALID", op, uuid=VM1)
        await hv.destroy(VM1)  # no error: the master cleans up with it
    run(make, body)


def test_destroy_removes_whatever_the_state(make, boot):
    async def body(new):
        hv = await new()
        await hv.start(VM1, GiB, 1, boot=boot)
        await hv.start(VM2, GiB, 1, paused=True, boot=boot)
        await hv.destroy(VM1)
        await hv.destroy(VM2)
        assert await hv.list_domains() == []
        assert hv.memory_free == hv.memory_total
    run(make, body)


def test_disabled_host_refuses_new_domains(make, boot):
    async def body(new):
        hv = await new()
        assert await hv.set_enabled(False) is False and not hv.enabled
        await raises("HOST_DISABLED", hv.start(VM1, GiB, 1, boot=boot), host=HOST)
        assert await hv.set_enabled(True)
        await hv.start(VM1, GiB, 1, boot=boot)
    run(make, body)


def test_one_operation_per_domain(make, boot):
    async def body(new):
        hv = await new()
        await hv.start(VM1, GiB, 1, boot=boot)
        stopping = asyncio.ensure_future(hv.shutdown(VM1))
        await asyncio.sleep(0)  # the shutdown has begun and waits on the hypervisor
        await raises("OTHER_OPERATION_IN_PROGRESS", hv.pause(VM1), operation="clean_shutdown")
        assert (await stopping).state == HALTED
    run(make, body)
