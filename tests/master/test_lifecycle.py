"""Lifecycle over a real store with a scripted forwarder: no network, no sleeping."""

from __future__ import annotations

import asyncio

import pytest

from tests.master.world import GIB, NOW, World, run
from xcp_control.errors import XcpError
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.master.reconcile import Reconciler
from xcp_control.master.lifecycle import Lifecycle
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.settings import OperationTimeouts
from xcp.v1 import datamodel_pb2 as dm


class ScriptedForwarder:
    """Records calls; each answers when its gate opens, or fails as scripted."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.failure: XcpError | None = None
        self._arrived = asyncio.Condition()

    async def reached(self, count: int) -> None:
        """Until `count` calls have reached the forwarder (each holds its lock)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.calls) >= count)

    async def call(self, host, method, request, *, operation, timeout, budget):
        self.calls.append((host, method))
        async with self._arrived:
            self._arrived.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return None

    def forget(self, host):
        pass


def lifecycle(world: World) -> tuple[Lifecycle, ScriptedForwarder]:
    forwarder = ScriptedForwarder()
    mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW, write_interval=30.0)
    sessions = HeartbeatSessions(world.store, world.liveness, mirror, 1.0, clock=lambda: NOW)
    life = Lifecycle(world.pool, forwarder, OperationTimeouts())
    reconciler = Reconciler(world.store, world.pool.locks, life.destroy_domain,
                            sessions.request_domains)
    sessions.add_domains_listener(reconciler.on_domains)
    world.liveness.add_listener(life.on_flip)
    return life, forwarder


async def reason(awaitable) -> str:
    with pytest.raises(XcpError) as err:
        await awaitable
    return err.value.reason


def test_start_places_forwards_then_stores(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        host = await world.add_host("h1")
        vm = await world.add_vm("v")
        started = await life.start_vm(vm.uuid, "", False, None)
        assert (started.power_state, started.resident_on) == (dm.RUNNING, host.uuid)
        assert fwd.calls == [(host.uuid, "StartDomain")]
        assert world.store.get("vm", vm.uuid).resident_on == host.uuid
        assert await reason(life.start_vm(vm.uuid, "", False, None)) == "VM_BAD_POWER_STATE"
    run(body, tmp_path)


def test_failed_forward_changes_nothing(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        host = await world.add_host("h1")
        vm = await world.add_vm("v", dm.RUNNING, host.uuid)
        fwd.failure = XcpError("CANNOT_CONTACT_HOST", host=host.uuid)
        generation = world.store.generation
        assert await reason(life.shutdown_vm(vm.uuid, False, None)) == "CANNOT_CONTACT_HOST"
        assert world.store.get("vm", vm.uuid).power_state == dm.RUNNING
        assert world.store.generation == generation
    run(body, tmp_path)


def test_second_operation_on_a_vm_is_refused_while_the_first_runs(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        host = await world.add_host("h1")
        vm = await world.add_vm("v", dm.RUNNING, host.uuid)
        fwd.gate = asyncio.Event()
        first = asyncio.ensure_future(life.shutdown_vm(vm.uuid, False, None))
        await fwd.reached(1)
        assert await reason(life.pause_vm(vm.uuid, None)) == "OTHER_OPERATION_IN_PROGRESS"
        fwd.gate.set()
        assert (await first).power_state == dm.HALTED
    run(body, tmp_path)


def test_concurrent_operations_on_one_host_release_cleanly(tmp_path):
    """Regression: two calls that reserve no memory, on one host, at once."""
    async def body(world: World):
        life, fwd = lifecycle(world)
        host = await world.add_host("h1")
        vms = [await world.add_vm(f"v{i}", dm.RUNNING, host.uuid) for i in range(3)]
        fwd.gate = asyncio.Event()
        calls = [asyncio.ensure_future(life.pause_vm(vm.uuid, None)) for vm in vms]
        await fwd.reached(3)
        fwd.gate.set()
        results = await asyncio.gather(*calls)
        assert {vm.power_state for vm in results} == {dm.PAUSED}
    run(body, tmp_path)


def test_concurrent_starts_cannot_both_take_the_last_memory(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        await world.add_host("small")  # 64 GiB
        big = [await world.add_vm(f"big{i}") for i in range(2)]
        for vm in big:
            stored = world.store.get("vm", vm.uuid)
            stored.memory = 40 * GIB
            await world.store.put(stored)
        fwd.gate = asyncio.Event()
        first = asyncio.ensure_future(life.start_vm(big[0].uuid, "", False, None))
        await fwd.reached(1)
        assert await reason(life.start_vm(big[1].uuid, "", False, None)) == "NO_HOSTS_AVAILABLE"
        fwd.gate.set()
        assert (await first).power_state == dm.RUNNING
    run(body, tmp_path)


def test_explicit_host_errors(tmp_path):
    async def body(world: World):
        life, _ = lifecycle(world)
        dead = await world.add_host("dead", live=False)
        vm = await world.add_vm("v")
        assert await reason(life.start_vm(vm.uuid, dead.uuid, False, None)) == "HOST_OFFLINE"
        assert await reason(life.start_vm(vm.uuid, "not-a-uuid", False, None)) == "INVALID_VALUE"
        missing = "0b5e7c8e-1111-4222-8333-444455556666"
        assert await reason(life.start_vm(vm.uuid, missing, False, None)) == "HANDLE_INVALID"
    run(body, tmp_path)


def test_disable_is_forwarded_then_stored(tmp_path):
    async def body(world: World):
        life, fwd = lifecycle(world)
        host = await world.add_host("h1")
        assert (await life.set_host_enabled(host.uuid, False, None)).enabled is False
        assert fwd.calls == [(host.uuid, "SetEnabled")]
        vm = await world.add_vm("v")
        assert await reason(life.start_vm(vm.uuid, host.uuid, False, None)) == "HOST_DISABLED"
    run(body, tmp_path)
