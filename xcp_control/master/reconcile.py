"""Reconciliation: the master's VM records against the domains a host reports.

The host is the truth about what stopped, the master about what may run:
- a VM the master has RUNNING or PAUSED on a host that reports no such domain,
  or reports it HALTED (stopped on its own), becomes HALTED;
- a domain PAUSED or RUNNING against the record takes the host's state;
- a domain whose VM the master has elsewhere, HALTED or not at all (a host
  back after DeclareDead, a VM destroyed meanwhile) is destroyed on the host,
  so that no VM ever runs twice. Such domains are never adopted.
VMs with an operation in progress are left alone: their operation decides.
So are VMs whose operation ended after the report arrived, or just before
(SETTLE): the report was built before the operation's outcome, and the next
one, asked for at once, settles them (a StartVM's fresh domain is never taken
for a stale one and destroyed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from xcp_control.errors import XcpError
from xcp_control.master.locks import OperationLocks
from xcp_control.master.store import Put, Store
from xcp_control.model import copy, halted
from xcp.v1 import datamodel_pb2 as dm, slave_service_pb2 as sl

RESIDENT = (dm.RUNNING, dm.PAUSED)
SETTLE = 1.0  # seconds: how long before its arrival a slave may have built its report
log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What to change after one domain report."""

    records: list[dm.VM] = field(default_factory=list)  # new values to store
    destroy: list[str] = field(default_factory=list)  # VM uuids whose domain must go
    skipped: list[str] = field(default_factory=list)  # VMs busy with an operation

    def __bool__(self) -> bool:
        return bool(self.records or self.destroy)


def plan(host: str, domains: Sequence[sl.Domain], resident: Sequence[dm.VM],
         lookup: Callable[[str], dm.VM | None], busy: Callable[[str], bool]) -> Plan:
    """Compare `resident` (VMs the master has on `host`) with `domains`."""
    out = Plan()
    reported = {d.vm_uuid: d for d in domains}
    for vm in resident:
        if vm.power_state not in RESIDENT:
            continue
        if busy(vm.uuid):
            out.skipped.append(vm.uuid)
            continue
        domain = reported.get(vm.uuid)
        if domain is None or domain.state not in RESIDENT:
            out.records.append(halted(vm))
        elif domain.state != vm.power_state:
            changed = copy(vm)
            changed.power_state = domain.state
            out.records.append(changed)
    for domain in domains:
        vm = lookup(domain.vm_uuid)
        if vm is not None and vm.resident_on == host:
            continue
        if busy(domain.vm_uuid):
            out.skipped.append(domain.vm_uuid)
        elif domain.state in RESIDENT:
            out.destroy.append(domain.vm_uuid)
    return out


class Reconciler:
    """Runs a plan for each full domain list a host sends, one host at a time."""

    def __init__(self, store: Store, locks: OperationLocks,
                 destroy_domain: Callable[[str, str], Awaitable[object]],
                 request_domains: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._locks = locks
        self._clock = clock  # the same clock as the locks'
        self._destroy_domain = destroy_domain
        self._request_domains = request_domains
        self._latest: dict[str, tuple[list[sl.Domain], float]] = {}  # and when it came
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def on_domains(self, host: str, domains: Sequence[sl.Domain]) -> None:
        """Called on the heartbeat path: never waits; reports coalesce per host."""
        self._latest[host] = (list(domains), self._clock())
        if host not in self._running:
            self._running.add(host)
            task = asyncio.ensure_future(self._drain(host))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, host: str) -> None:
        try:
            while (report := self._latest.pop(host, None)) is not None:
                await self._reconcile(host, *report)
        except Exception:  # noqa: BLE001 - the next report retries
            log.exception("reconciling host %s failed", host)
        finally:
            self._running.discard(host)

    def _busy(self, uuid: str, received: float) -> bool:
        """An operation runs on the VM, or ended too late for the report to show it."""
        if self._locks.current("vm", uuid) is not None:
            return True
        ended = self._locks.ended_at("vm", uuid)
        return ended is not None and ended >= received - SETTLE

    async def _reconcile(self, host: str, domains: Sequence[sl.Domain],
                         received: float) -> None:
        work = plan(host, domains, self._store.find("vm", "resident_on", host),
                    lambda uuid: self._store.get("vm", uuid),
                    lambda uuid: self._busy(uuid, received))
        if work.records:
            for vm in work.records:
                log.info("reconcile: VM %s on host %s is now %s", vm.uuid, host,
                         dm.PowerState.Name(vm.power_state))
            await self._store.commit([Put(vm) for vm in work.records])
        for vm in work.destroy:
            log.warning("reconcile: destroying domain of VM %s on host %s: it may not run "
                        "there", vm, host)
            try:
                await self._destroy_domain(host, vm)
            except XcpError as exc:
                log.warning("reconcile: could not destroy VM %s's domain on %s: %s",
                            vm, host, exc.reason)
                work.skipped.append(vm)
        if work.skipped:
            # Ask for the list again on the next beat: the busy VMs' operations
            # will be over by then, or the failed destroy retried.
            self._request_domains(host)
