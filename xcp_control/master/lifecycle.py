"""Forwarded operations: the VM lifecycle and host enable/disable.

Every operation has the same shape (`_forwarded`): hold the object's
operation lock (OTHER_OPERATION_IN_PROGRESS for a second caller), check the
power state (VM_BAD_POWER_STATE), forward one SlaveService call through the
Forwarder (HOST_OFFLINE, CANNOT_CONTACT_HOST, OPERATION_TIMED_OUT, or the
slave's own catalogued error), and only once the slave has succeeded, store
the new record.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from google.protobuf.message import Message

from xcp_control import validation

from xcp_control.master import placement
from xcp_control.errors import XcpError
from xcp_control.master.forwarding import Forwarder
from xcp_control.master.pool import Pool, bad_power_state
from xcp_control.master.reconcile import RESIDENT
from xcp_control.settings import OperationTimeouts
from xcp_control.model import copy, halted, state_names, with_state
from xcp.v1 import datamodel_pb2 as dm, slave_service_pb2 as sl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VmOperation:
    """One lifecycle operation: where it may start from and what it becomes."""

    name: str  # for locks and errors: "start", "clean_shutdown", ...
    method: str  # the SlaveService method forwarded to
    expected: tuple[int, ...]  # power states it may start from
    timeout: str  # the OperationTimeouts field that bounds it


class Lifecycle:
    """VM lifecycle and host enable/disable, forwarded to the hosts."""

    def __init__(self, pool: Pool, forwarder: Forwarder, timeouts: OperationTimeouts) -> None:
        self._pool = pool
        self._store = pool.store
        self._forwarder = forwarder
        self._timeouts = timeouts
        self._reserved: dict[str, int] = {}  # host -> memory of starts in flight
        self._background: set[asyncio.Task] = set()

    # -- VMs -----------------------------------------------------------------

    async def start_vm(self, uuid: str, host: str, paused: bool,
                       budget: float | None, ha_restart: bool = False) -> dm.VM:
        """StartVM; `ha_restart` for HA's own restarts, which the failover plan
        does not check (they are what the plan is for)."""
        op = VmOperation("start", "StartDomain", (dm.HALTED,), "start")
        requested = validation.optional_uuid("host", host)

        def forward(vm: dm.VM) -> tuple[str, Message]:
            target = self._place(vm, requested)
            if self._pool.plan is not None and not ha_restart:
                self._pool.plan.check_start(vm, target)
            return target, sl.StartDomainRequest(
                vm_uuid=vm.uuid, memory=vm.memory, vcpus=vm.vcpus, paused=paused,
                pv_kernel=vm.pv_kernel, pv_ramdisk=vm.pv_ramdisk, pv_args=vm.pv_args)

        def result(vm: dm.VM, target: str) -> dm.VM:
            out = copy(vm)
            out.power_state = dm.PAUSED if paused else dm.RUNNING
            out.resident_on = target
            if ha_restart:  # restarted: no longer pending, in the same write
                out.ha_restart_pending = False
            return out

        return await self._forwarded(uuid, op, forward, result, budget)

    async def shutdown_vm(self, uuid: str, force: bool, budget: float | None) -> dm.VM:
        name = "hard_shutdown" if force else "clean_shutdown"
        op = VmOperation(name, "ShutdownDomain", RESIDENT, name)
        return await self._on_resident(
            uuid, op, lambda vm: sl.ShutdownDomainRequest(vm_uuid=vm.uuid, force=force),
            lambda vm, host: halted(vm), budget)

    async def reboot_vm(self, uuid: str, force: bool, budget: float | None) -> dm.VM:
        op = VmOperation("hard_reboot" if force else "clean_reboot", "RebootDomain",
                         (dm.RUNNING,), "reboot")
        return await self._on_resident(
            uuid, op, lambda vm: sl.RebootDomainRequest(vm_uuid=vm.uuid, force=force),
            lambda vm, host: vm, budget)

    async def pause_vm(self, uuid: str, budget: float | None) -> dm.VM:
        op = VmOperation("pause", "PauseDomain", (dm.RUNNING,), "pause")
        return await self._on_resident(
            uuid, op, lambda vm: sl.PauseDomainRequest(vm_uuid=vm.uuid),
            lambda vm, host: with_state(vm, dm.PAUSED), budget)

    async def unpause_vm(self, uuid: str, budget: float | None) -> dm.VM:
        op = VmOperation("unpause", "UnpauseDomain", (dm.PAUSED,), "pause")
        return await self._on_resident(
            uuid, op, lambda vm: sl.UnpauseDomainRequest(vm_uuid=vm.uuid),
            lambda vm, host: with_state(vm, dm.RUNNING), budget)

    async def _on_resident(self, uuid: str, op: VmOperation,
                           request: Callable[[dm.VM], Message],
                           result: Callable[[dm.VM, str], dm.VM],
                           budget: float | None) -> dm.VM:
        """An operation forwarded to the host the VM is resident on."""
        return await self._forwarded(uuid, op, lambda vm: (vm.resident_on, request(vm)),
                                     result, budget)

    async def _forwarded(self, uuid: str, op: VmOperation,
                         forward: Callable[[dm.VM], tuple[str, Message]],
                         result: Callable[[dm.VM, str], dm.VM],
                         budget: float | None) -> dm.VM:
        """The one shape of every VM operation."""
        vm = self._pool.vm(uuid)
        with self._pool.locks.hold("vm", vm.uuid, op.name):
            vm = self._pool.vm(uuid)  # as it is now that we hold the lock
            if vm.power_state not in op.expected:
                raise bad_power_state(vm, state_names(op.expected))
            host, request = forward(vm)
            with self._reserve(host, vm.memory if op.name == "start" else 0):
                await self._forwarder.call(host, op.method, request, operation=op.name,
                                           timeout=getattr(self._timeouts, op.timeout),
                                           budget=budget)
            updated = result(vm, host)
            if updated != vm:
                await self._store.put(updated)
            return updated

    # -- placement -------------------------------------------------------------

    def _place(self, vm: dm.VM, requested: str) -> str:
        if requested:
            self._pool.host(requested)  # HANDLE_INVALID for an unknown host
            placement.check_host(vm.uuid, vm.memory, self._candidate(requested))
            return requested
        hosts = [self._candidate(h.uuid) for h in self._store.list("host")]
        return placement.choose(vm.uuid, vm.memory, vm.affinity, hosts)

    def _candidate(self, host: str) -> placement.Candidate:
        record = self._store.get("host", host)
        metrics = self._store.get("host_metrics", record.metrics)
        total = metrics.memory_total if metrics else 0
        used = sum(vm.memory for vm in self._store.find("vm", "resident_on", host)
                   if vm.power_state in RESIDENT)
        return placement.Candidate(
            uuid=host, live=self._pool.liveness.is_live(host), enabled=record.enabled,
            free_memory=total - used - self._reserved.get(host, 0))

    @contextmanager
    def _reserve(self, host: str, memory: int) -> Iterator[None]:
        # Operations that reserve nothing leave the table alone: a zero entry
        # would be deleted by whichever concurrent operation on the host ends
        # first, and the next one to end would fail with a KeyError.
        if not memory:
            yield
            return
        self._reserved[host] = self._reserved.get(host, 0) + memory
        try:
            yield
        finally:
            left = self._reserved.get(host, 0) - memory
            if left > 0:
                self._reserved[host] = left
            else:
                self._reserved.pop(host, None)

    # -- hosts -----------------------------------------------------------------

    async def set_host_enabled(self, uuid: str, enabled: bool,
                               budget: float | None) -> dm.Host:
        """DisableHost / EnableHost: forwarded to the host, as xapi does."""
        host = self._pool.host(uuid)
        operation = "enable" if enabled else "disable"
        with self._pool.locks.hold("host", host.uuid, operation):
            await self._forwarder.call(host.uuid, "SetEnabled",
                                       sl.SetEnabledRequest(enabled=enabled),
                                       operation=operation, timeout=self._timeouts.admin,
                                       budget=budget)
            updated = copy(self._pool.host(uuid))
            updated.enabled = enabled
            await self._store.put(updated)
            return updated

    def on_flip(self, host: str, live: bool) -> None:
        """A restarted slave comes back enabled (it keeps only its uuid): tell a
        host the operator disabled that it still is."""
        record = self._store.get("host", host)
        if live and record is not None and not record.enabled:
            task = asyncio.ensure_future(self._redisable(host))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _redisable(self, host: str) -> None:
        try:
            await self._forwarder.call(host, "SetEnabled", sl.SetEnabledRequest(enabled=False),
                                       operation="disable", timeout=self._timeouts.admin,
                                       budget=None)
        except XcpError as exc:
            log.warning("could not re-disable host %s: %s", host, exc.reason)

    async def destroy_domain(self, host: str, vm: str) -> None:
        """Remove a domain that must not run on `host` (reconciliation)."""
        await self._forwarder.call(host, "DestroyDomain", sl.DestroyDomainRequest(vm_uuid=vm),
                                   operation="destroy", timeout=self._timeouts.destroy,
                                   budget=None)
