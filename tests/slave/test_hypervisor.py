"""SimulatedHypervisor and domains_digest: unit tests, no network, no sleeping
(durations are 0; an injected gate holds an operation open where a test
needs one in progress)."""

from __future__ import annotations

import asyncio

import pytest

from xcp.v1 import slave_service_pb2
from xcp_control.errors import XcpError
from xcp_control.model import HALTED, PAUSED, RUNNING, domains_digest
from xcp_control.slave.hypervisor import DomainInfo, Hypervisor, SimulatedHypervisor
from xcp_control.settings import SlaveSettings

HOST = "11111111-1111-4111-8111-111111111111"
VM1 = "aaaaaaaa-0000-4000-8000-000000000001"
VM2 = "aaaaaaaa-0000-4000-8000-000000000002"
GiB = 1024**3


def run(coro):
    return asyncio.run(coro)


class Gate:
    """An injectable sleep that holds every operation until opened."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.calls: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.entered.set()
        await self.opened.wait()


def new_hv(memory: int = 4 * GiB, **kwargs) -> SimulatedHypervisor:
    return SimulatedHypervisor(HOST, memory, **kwargs)


def expect(reason: str, **params):
    """Context manager: the block raises XcpError(reason) with these params."""
    class _Expect:
        def __enter__(self):
            return self

        def __exit__(self, typ, exc, tb):
            assert typ is XcpError, f"expected {reason}, got {typ and typ.__name__}: {exc}"
            assert exc.reason == reason, exc.message
            for key, value in params.items():
                assert exc.params[key] == value, (key, exc.params)
            return True
    return _Expect()


# -- lifecycle ---------------------------------------------------------------


def test_start_lists_domain_and_accounts_memory():
    async def go():
        hv = new_hv()
        d = await hv.start(VM1, GiB, 2)
        assert d == DomainInfo(VM1, RUNNING, GiB, 2)
        assert await hv.list_domains() == [d]
        assert hv.memory_total == 4 * GiB
        assert hv.memory_free == 3 * GiB
    run(go())


def test_start_paused_and_list_ordered_by_uuid():
    async def go():
        hv = new_hv()
        await hv.start(VM2, GiB, 1)
        d1 = await hv.start(VM1, GiB, 1, paused=True)
        assert d1.state == PAUSED
        assert [d.vm_uuid for d in await hv.list_domains()] == [VM1, VM2]
    run(go())


def test_full_lifecycle_pause_unpause_reboot_shutdown():
    async def go():
        hv = new_hv()
        await hv.start(VM1, GiB, 1)
        assert (await hv.pause(VM1)).state == PAUSED
        assert (await hv.unpause(VM1)).state == RUNNING
        assert (await hv.reboot(VM1)).state == RUNNING
        assert (await hv.reboot(VM1, force=True)).state == RUNNING
        halted = await hv.shutdown(VM1)
        assert halted.state == HALTED and halted.vm_uuid == VM1
        assert await hv.list_domains() == []  # a halted domain is not listed
        assert hv.memory_free == hv.memory_total
    run(go())


def test_hard_shutdown_of_paused_domain():
    async def go():
        hv = new_hv()
        await hv.start(VM1, GiB, 1, paused=True)
        assert (await hv.shutdown(VM1, force=True)).state == HALTED
        assert await hv.list_domains() == []
    run(go())


def test_memory_is_freed_and_reusable_after_shutdown():
    async def go():
        hv = new_hv(memory=2 * GiB)
        await hv.start(VM1, 2 * GiB, 1)
        await hv.shutdown(VM1)
        await hv.start(VM2, 2 * GiB, 1)
        assert hv.memory_free == 0
    run(go())


# -- errors ------------------------------------------------------------------


def test_not_enough_memory():
    async def go():
        hv = new_hv(memory=2 * GiB)
        await hv.start(VM1, GiB, 1)
        with expect("HOST_NOT_ENOUGH_FREE_MEMORY", vm=VM2, host=HOST):
            await hv.start(VM2, GiB + 1, 1)
        assert hv.memory_free == GiB
        assert [d.vm_uuid for d in await hv.list_domains()] == [VM1]
    run(go())


def test_start_existing_domain_is_bad_power_state():
    async def go():
        hv = new_hv()
        await hv.start(VM1, GiB, 1)
        with expect("VM_BAD_POWER_STATE", vm=VM1, expected="HALTED", actual="RUNNING"):
            await hv.start(VM1, GiB, 1)
        await hv.pause(VM1)
        with expect("VM_BAD_POWER_STATE", vm=VM1, expected="HALTED", actual="PAUSED"):
            await hv.start(VM1, GiB, 1)
    run(go())


def test_wrong_state_operations():
    async def go():
        hv = new_hv()
        await hv.start(VM1, GiB, 1)
        with expect("VM_BAD_POWER_STATE", vm=VM1, expected="PAUSED", actual="RUNNING"):
            await hv.unpause(VM1)
        await hv.pause(VM1)
        with expect("VM_BAD_POWER_STATE", vm=VM1, expected="RUNNING", actual="PAUSED"):
            await hv.pause(VM1)
        with expect("VM_BAD_POWER_STATE", vm=VM1, expected="RUNNING", actual="PAUSED"):
            await hv.reboot(VM1)
    run(go())


@pytest.mark.parametrize("op", ["shutdown", "reboot", "pause", "unpause"])
def test_unknown_domain_is_handle_invalid(op):
    async def go():
        hv = new_hv()
        with expect("HANDLE_INVALID", **{"class": "vm", "uuid": VM1}):
            await getattr(hv, op)(VM1)
    run(go())


def test_destroy_unknown_domain_is_idempotent():
    async def go():
        hv = new_hv()
        assert await hv.destroy(VM1) is None
        await hv.start(VM1, GiB, 1)
        await hv.destroy(VM1)
        await hv.destroy(VM1)
        assert await hv.list_domains() == []
        assert hv.memory_free == hv.memory_total
    run(go())


def test_disabled_host_refuses_start_only():
    async def go():
        hv = new_hv()
        await hv.start(VM1, GiB, 1)
        assert await hv.set_enabled(False) is False
        assert hv.enabled is False
        with expect("HOST_DISABLED", host=HOST):
            await hv.start(VM2, GiB, 1)
        assert (await hv.pause(VM1)).state == PAUSED  # existing domains still managed
        await hv.set_enabled(True)
        assert (await hv.start(VM2, GiB, 1)).state == RUNNING
    run(go())


# -- one operation at a time ---------------------------------------------------


def test_second_operation_on_busy_domain_is_refused():
    async def go():
        gate = Gate()
        hv = new_hv(sleep=gate.sleep)
        starting = asyncio.create_task(hv.start(VM1, GiB, 1))
        await gate.entered.wait()
        assert await hv.list_domains() == []  # not reported while booting...
        assert hv.memory_free == 3 * GiB  # ...but its memory is already held
        in_progress = {"class": "vm", "uuid": VM1, "operation": "start"}
        with expect("OTHER_OPERATION_IN_PROGRESS", **in_progress):
            await hv.start(VM1, GiB, 1)
        with expect("OTHER_OPERATION_IN_PROGRESS", **in_progress):
            await hv.shutdown(VM1, force=True)
        gate.opened.set()
        assert (await starting).state == RUNNING
        gate.opened.clear()
        gate.entered.clear()
        pausing = asyncio.create_task(hv.pause(VM1))
        await gate.entered.wait()
        with expect("OTHER_OPERATION_IN_PROGRESS", operation="pause"):
            await hv.reboot(VM1)
        gate.opened.set()
        assert (await pausing).state == PAUSED
    run(go())


def test_other_domains_are_not_blocked():
    async def go():
        gate = Gate()
        hv = new_hv(sleep=gate.sleep)
        first = asyncio.create_task(hv.start(VM1, GiB, 1))
        await gate.entered.wait()
        second = asyncio.create_task(hv.start(VM2, GiB, 1))
        gate.opened.set()
        await asyncio.gather(first, second)
        assert len(await hv.list_domains()) == 2
    run(go())


def test_destroy_interrupts_running_operation():
    async def go():
        gate = Gate()
        hv = new_hv(sleep=gate.sleep)
        starting = asyncio.create_task(hv.start(VM1, GiB, 1))
        await gate.entered.wait()
        await hv.destroy(VM1)
        with expect("HANDLE_INVALID", **{"class": "vm", "uuid": VM1}):
            await starting
        assert await hv.list_domains() == []
        assert hv.memory_free == hv.memory_total
    run(go())


def test_cancelled_start_releases_memory():
    async def go():
        gate = Gate()
        hv = new_hv(sleep=gate.sleep)
        starting = asyncio.create_task(hv.start(VM1, GiB, 1))
        await gate.entered.wait()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert hv.memory_free == hv.memory_total
        gate.opened.set()
        assert (await hv.start(VM1, GiB, 1)).state == RUNNING  # no leftover, no busy flag
    run(go())


def test_operation_durations_come_from_settings():
    async def go():
        gate = Gate()
        gate.opened.set()
        settings = SlaveSettings(boot_time=3, clean_shutdown_time=5, hard_shutdown_time=1,
                                 pause_time=0.5, memory=4 * GiB)
        hv = SimulatedHypervisor.from_settings(HOST, settings)
        hv._sleep = gate.sleep  # noqa: SLF001 - observe the durations without waiting
        await hv.start(VM1, GiB, 1)
        await hv.pause(VM1)
        await hv.unpause(VM1)
        await hv.reboot(VM1)
        await hv.reboot(VM1, force=True)
        await hv.shutdown(VM1)
        await hv.start(VM1, GiB, 1)
        await hv.shutdown(VM1, force=True)
        assert gate.calls == [3, 0.5, 0.5, 5 + 3, 1 + 3, 5, 3, 1]
        assert hv.memory_total == 4 * GiB
    run(go())


# -- change listener -----------------------------------------------------------


def test_listener_fires_on_every_list_or_state_change():
    async def go():
        hv = new_hv()
        fired: list[list[tuple[str, int]]] = []

        def snapshot() -> None:
            fired.append([(d.vm_uuid, d.state) for _, d in sorted(hv._domains.items())
                          if d.listed])

        remove = hv.add_listener(snapshot)
        await hv.start(VM1, GiB, 1)
        assert fired[-1] == [(VM1, RUNNING)]
        await hv.pause(VM1)
        assert fired[-1] == [(VM1, PAUSED)]
        await hv.unpause(VM1)
        await hv.reboot(VM1)  # no visible change
        count = len(fired)
        await hv.shutdown(VM1)
        assert len(fired) == count + 1 and fired[-1] == []
        await hv.start(VM2, GiB, 1)
        await hv.destroy(VM2)
        assert fired[-1] == []
        assert len(fired) == 6
        with expect("HANDLE_INVALID"):
            await hv.pause(VM1)
        await hv.destroy(VM1)  # unknown: nothing changed
        assert len(fired) == 6
        remove()
        await hv.start(VM1, GiB, 1)
        assert len(fired) == 6
    run(go())


def test_failing_listener_does_not_fail_the_operation():
    async def go():
        hv = new_hv()
        calls = []
        hv.add_listener(lambda: 1 / 0)
        hv.add_listener(lambda: calls.append(1))
        assert (await hv.start(VM1, GiB, 1)).state == RUNNING
        assert calls == [1]
    run(go())


# -- digest and interface ------------------------------------------------------


def test_digest_is_stable_and_order_independent():
    a = DomainInfo(VM1, RUNNING, GiB, 1)
    b = DomainInfo(VM2, PAUSED, 2 * GiB, 4)
    assert domains_digest([a, b]) == domains_digest([b, a])
    assert domains_digest([a, b]) == domains_digest((x for x in [a, b]))
    # Only (vm_uuid, state) matter, and proto Domains digest alike.
    assert domains_digest([a]) == domains_digest([DomainInfo(VM1, RUNNING, 7, 7)])
    assert domains_digest([a]) == domains_digest([a.to_proto()])
    assert domains_digest([a]) != domains_digest([DomainInfo(VM1, PAUSED, GiB, 1)])
    assert domains_digest([a]) != domains_digest([a, b])
    empty = domains_digest([])
    assert empty and empty != domains_digest([a])
    assert len(empty) == 16 and int(empty, 16) >= 0
    # Stable across processes and releases: the master compares digests.
    assert empty == "e3b0c44298fc1c14"


def test_to_proto():
    d = DomainInfo(VM1, PAUSED, GiB, 2).to_proto()
    assert d == slave_service_pb2.Domain(vm_uuid=VM1, state=PAUSED, memory=GiB, vcpus=2)


def test_hypervisor_is_abstract():
    with pytest.raises(TypeError):
        Hypervisor(HOST)  # type: ignore[abstract]
    assert issubclass(SimulatedHypervisor, Hypervisor)
