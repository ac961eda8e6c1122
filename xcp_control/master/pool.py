"""Pool operations that need no host: reads, VM records, forgetting and
declaring hosts dead. Plain logic over the store; the servicers call it."""

from __future__ import annotations

import bisect
import uuid as uuid_module
from typing import Callable

from xcp_control import validation
from xcp_control.master import vm_update
from xcp_control import errors
from xcp_control.errors import XcpError
from xcp_control.model import halted, state_name
from xcp_control.master.liveness import Liveness
from xcp_control.master.locks import OperationLocks
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.store import Delete, Put, Store
from xcp_control.master.pool_ha import PoolHa
from xcp.v1 import datamodel_pb2 as dm

HALTED = dm.HALTED
ForgetListener = Callable[[str], None]


def halted_after_failure(vm: dm.VM, ha: bool) -> dm.VM:
    """A VM of a failed host, HALTED; marked for HA's restart when HA is on
    and it is protected and was running (ha_restart.py restarts it)."""
    out = halted(vm)
    if ha and vm.power_state in (dm.RUNNING, dm.PAUSED) and vm.ha_restart_priority:
        out.ha_restart_pending = True
    return out


def bad_power_state(vm: dm.VM, expected: str) -> XcpError:
    return errors.vm_bad_power_state(vm.uuid, expected, state_name(vm.power_state))


class Pool:
    """Hosts and VMs as the master's database holds them."""

    def __init__(self, store: Store, liveness: Liveness, mirror: MetricsMirror,
                 locks: OperationLocks, plan: PoolHa | None = None) -> None:
        self.store = store
        self.liveness = liveness
        self.mirror = mirror
        self.locks = locks
        self.plan = plan  # the HA failover plan's checks (None: none)
        self._forget_listeners: list[ForgetListener] = []

    def add_forget_listener(self, listener: ForgetListener) -> None:
        self._forget_listeners.append(listener)

    # -- hosts ---------------------------------------------------------------

    def host(self, uuid: str) -> dm.Host:
        """The host, or HANDLE_INVALID (INVALID_VALUE for a malformed uuid)."""
        found = self.store.get("host", validation.uuid("uuid", uuid))
        if found is None:
            raise errors.handle_invalid("host", uuid)
        return found

    def metrics_of(self, host: dm.Host) -> dm.HostMetrics:
        stored = self.store.get("host_metrics", host.metrics)
        return self.mirror.view(stored or dm.HostMetrics(uuid=host.metrics, host=host.uuid))

    def host_metrics(self, uuid: str) -> dm.HostMetrics:
        return self.metrics_of(self.host(uuid))

    async def forget_host(self, uuid: str) -> None:
        """Remove a host that is not live; VMs it ran are HALTED."""
        host = self.host(uuid)
        if self.liveness.is_live(host.uuid):
            raise errors.host_is_live(host.uuid)
        with self.locks.hold("host", host.uuid, "forget"):
            ops = [Put(halted(vm)) for vm in self.store.find("vm", "resident_on", host.uuid)]
            ops += [Delete("host_metrics", host.metrics), Delete("host", host.uuid)]
            await self.store.commit(ops)
        self.liveness.forget(host.uuid)
        self.mirror.forget(host.uuid)
        for listener in self._forget_listeners:
            listener(host.uuid)

    async def declare_dead(self, uuid: str) -> dm.Host:
        """The operator says the host is down: not live, its VMs HALTED. Nothing
        is forwarded. If the host comes back, reconciliation destroys any of its
        domains whose VM runs elsewhere by then."""
        host = self.host(uuid)
        with self.locks.hold("host", host.uuid, "declare_dead"):
            self.liveness.mark_down(host.uuid)
            vms = self.store.find("vm", "resident_on", host.uuid)
            # With HA: the operator asserts the fence; protected VMs restart elsewhere.
            ha = self.plan is not None and self.plan.enabled
            await self.store.commit([Put(halted_after_failure(vm, ha)) for vm in vms])
        return host

    # -- VMs -----------------------------------------------------------------

    def vm(self, uuid: str) -> dm.VM:
        found = self.store.get("vm", validation.uuid("uuid", uuid))
        if found is None:
            raise errors.handle_invalid("vm", uuid)
        return found

    def list_vms(self, host: str, power_state: int, page_size: int = 0,
                 page_token: str = "") -> tuple[list[dm.VM], str]:
        """The matching VMs ordered by uuid, one page of them when page_size > 0,
        and the token of the next page ("" after the last)."""
        validation.count("page_size", page_size, 0, validation.MAX_PAGE)
        after = validation.optional_uuid("page_token", page_token)
        vms = self._matching_vms(host, power_state)
        if after:
            vms = vms[bisect.bisect_right([vm.uuid for vm in vms], after):]
        if page_size and len(vms) > page_size:
            return vms[:page_size], vms[page_size - 1].uuid
        return vms, ""

    def _matching_vms(self, host: str, power_state: int) -> list[dm.VM]:
        host = validation.optional_uuid("host", host)
        power_state = validation.power_state("power_state", power_state, allow_unspecified=True)
        if host:
            vms = self.store.find("vm", "resident_on", host)
            if power_state:
                vms = [vm for vm in vms if vm.power_state == power_state]
        elif power_state:
            vms = self.store.find("vm", "power_state", power_state)
        else:
            vms = self.store.list("vm")
        return sorted(vms, key=lambda vm: vm.uuid)

    async def create_vm(self, name_label: str, memory: int, vcpus: int, affinity: str,
                        other_config: dict[str, str], ha_restart_priority: int = 0,
                        ha_restart_order: int = 0,
                        boot: validation.Boot = validation.NO_BOOT) -> dm.VM:
        vm = dm.VM(
            uuid=str(uuid_module.uuid4()),
            name_label=validation.name("name_label", name_label),
            power_state=HALTED,
            memory=validation.count("memory", memory, 1, validation.MAX_MEMORY),
            vcpus=validation.count("vcpus", vcpus, 1, validation.MAX_VCPUS),
            affinity=validation.optional_uuid("affinity", affinity),
            other_config=validation.other_config("other_config", other_config),
            ha_restart_priority=validation.ha_restart_priority("ha_restart_priority",
                                                               ha_restart_priority),
            ha_restart_order=validation.ha_restart_order("ha_restart_order", ha_restart_order),
            pv_kernel=boot.kernel, pv_ramdisk=boot.ramdisk, pv_args=boot.args)
        if vm.affinity:
            self.host(vm.affinity)
        await self.store.put(vm)
        return vm

    async def update_vm(self, new: dm.VM, mask: list[str]) -> dm.VM:
        """UpdateVM: the fields in `mask` (all set ones when empty) from `new`."""
        paths = vm_update.paths_of(new, mask)
        vm = self.vm(new.uuid)
        with self.locks.hold("vm", vm.uuid, "update"):
            out = vm_update.updated(self.vm(vm.uuid), new, paths)
            if out.affinity:
                self.host(out.affinity)
            if self.plan is not None:
                self.plan.check_update(vm, out)
            await self.store.put(out)
            return out

    async def destroy_vm(self, uuid: str) -> None:
        vm = self.vm(uuid)
        with self.locks.hold("vm", vm.uuid, "destroy"):
            vm = self.vm(uuid)
            if vm.power_state != HALTED:
                raise bad_power_state(vm, "HALTED")
            await self.store.delete("vm", vm.uuid)
