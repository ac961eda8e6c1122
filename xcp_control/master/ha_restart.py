"""When and in what order the leader restarts the VMs of a failed host
(xapi's HA restart), as plain logic on an injected monotonic clock.

A host is restartable once it must have fenced (the lease rule,
xcp_control/lease.py): it is armed (it acknowledged HA on for the pool's
current generation, ha_config.py: one that never heard fences never), its
fresh lease has run out (`fenced_by`, counted from the moment the leader saw
its heartbeat stream end, `lost_at`), and a strict majority of every witness
list it may hold, asked then, vouch that no lease could still be held by the
liveset rule (master/ha_quorum.py). DeclareDead is the operator asserting
the fence: restartable at once, armed or not. A leader that hears from no
majority of the pool's hosts restarts nothing (it may be the one cut off);
one that has just started or been elected restarts nothing until the
witnesses have been back for hold_bound.

The order: RESTART VMs by ha_restart_order (then uuid), then BEST_EFFORT the
same way; unprotected VMs are only set HALTED (they died with the fence).
Failed starts are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Iterable

from xcp_control.errors import XcpError
from xcp_control.lease import fenced_by, hold_bound
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm

log = logging.getLogger(__name__)

__all__ = ["PendingRestarts", "Restarter", "fenced_by", "has_quorum", "restart_sequence"]

PROOF_RETRY = 1.0  # seconds between two quorum proofs that failed (each asks every host)
RETRY_FIRST = 1.0  # seconds before the first retry of a failed start
RETRY_CAP = 30.0  # longest wait between two retries


def has_quorum(live_hosts: int, hosts: int) -> bool:
    """The leader hears a strict majority of the pool's hosts."""
    return live_hosts * 2 > hosts


def restart_sequence(vms: Iterable[dm.VM]) -> tuple[list[dm.VM], list[dm.VM], list[dm.VM]]:
    """(RESTART in order, BEST_EFFORT in order, unprotected) of a failed host's VMs."""
    key = (lambda v: (v.ha_restart_order, v.uuid))
    restart, best_effort, other = [], [], []
    for vm in vms:
        if vm.ha_restart_priority == dm.RESTART:
            restart.append(vm)
        elif vm.ha_restart_priority == dm.BEST_EFFORT:
            best_effort.append(vm)
        else:
            other.append(vm)
    return sorted(restart, key=key), sorted(best_effort, key=key), other


@dataclass
class Retry:
    """Backoff for one VM whose restart failed."""

    attempts: int = 0
    not_before: float = 0.0

    def failed(self, now: float) -> None:
        self.attempts += 1
        self.not_before = now + min(RETRY_CAP, RETRY_FIRST * 2 ** (self.attempts - 1))

    def ready(self, now: float) -> bool:
        return now >= self.not_before


@dataclass
class PendingRestarts:
    """VMs waiting to be restarted, with their retry state, in restart order."""

    retries: dict[str, Retry] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def add(self, vm_uuids: Iterable[str]) -> None:
        for uuid in vm_uuids:
            if uuid not in self.retries:
                self.retries[uuid] = Retry()
                self.order.append(uuid)

    def ready(self, now: float) -> list[str]:
        return [u for u in self.order if self.retries[u].ready(now)]

    def done(self, uuid: str) -> None:
        if self.retries.pop(uuid, None) is not None:
            self.order.remove(uuid)

    def failed(self, uuid: str, now: float) -> None:
        self.retries[uuid].failed(now)

    def __len__(self) -> int:
        return len(self.order)


# -- the controller ------------------------------------------------------------------


class Restarter:
    """The leader's HA restarts, as a liveness listener and one task.

    A host's flip to not live records lost_at (DeclareDead marks its VMs
    itself: pool.py). Once `fenced_by` has passed and the quorum proof
    holds, while HA is enabled and this master leads, the host's VMs are set
    HALTED in one commit, the protected ones marked ha_restart_pending
    (durable: a new leader restarts marked VMs, and a VM is only ever started
    from HALTED under its operation lock, so never twice). Marked VMs are then
    started through Lifecycle.start_vm with placement: RESTART placed by
    order and booted together, then BEST_EFFORT only while no RESTART VM
    waits; failures back off."""

    def __init__(self, store, liveness, pool_ha, lifecycle, fence_after, detect_bound: float,
                 clock, proof, transport_bound: float, acting=lambda: True,
                 tick: float = 0.25, may_hold=lambda host: [],
                 armed=lambda host: True) -> None:
        self._store = store
        self._liveness = liveness
        self._pool_ha = pool_ha
        self._lifecycle = lifecycle
        self._fence_after = fence_after  # host -> seconds (ha_config.HaAnnouncer.fence_after)
        self._detect_bound = detect_bound
        self._transport_bound = transport_bound  # the slaves' (ha_config.HaAnnouncer)
        self._proof = proof  # ha_quorum.QuorumProof
        # host -> every witness list it may hold; whether it is armed (ha_config.HaAnnouncer)
        self._may_hold = may_hold
        self._armed = armed
        self._clock = clock
        self._acting = acting
        self._tick = tick
        self.lost: dict[str, float] = {}  # host -> when the leader saw it go
        self.pending = PendingRestarts()
        self._proof_not_before = 0.0  # after a failed proof, when to ask again
        self._wake = None  # asyncio.Event, made in run()
        # Scan the VMs for marked ones only when some may exist: at the start,
        # when a marked VM is written, and while restarts are pending.
        self._scan = True

    # -- listeners -----------------------------------------------------------

    def on_flip(self, host: str, live: bool) -> None:
        # A host lost while HA is off was never told to fence: never restarted.
        if live:
            self.lost.pop(host, None)
        elif self._pool_ha.enabled:
            self.lost.setdefault(host, self._clock())
        self._poke()

    def on_changes(self, changes) -> None:
        if any(c.class_name == "vm" and c.obj.ha_restart_pending for c in changes):
            self._scan = True
            self._poke()

    async def host_fenced(self, host: str) -> None:
        """A host says in its Hello that it fenced: the VMs the store still has
        running there died with the fence (the leader had not failed the host:
        it heard no majority, or HA restart was not its to make). With HA on,
        they are set HALTED and the protected ones marked for restart, in one
        commit, before the host's domain list is reconciled."""
        if self._may_act():
            await self._fail(host)

    def lead(self) -> None:
        """This master starts leading (or starts alone): every host not live
        that still has resident VMs is lost from now on."""
        now = self._clock()
        self._scan = True
        if not self._pool_ha.enabled:
            return
        for host in self._store.list("host"):
            if not self._liveness.is_live(host.uuid) and self._resident(host.uuid):
                self.lost.setdefault(host.uuid, now)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the work ------------------------------------------------------------

    def _resident(self, host: str) -> list[dm.VM]:
        return [vm for vm in self._store.find("vm", "resident_on", host)
                if vm.power_state in (dm.RUNNING, dm.PAUSED)]

    def _may_act(self) -> bool:
        return self._acting() and self._pool_ha.enabled

    async def step(self) -> None:
        """One pass: fail the hosts that must have fenced, then restart."""
        if not self._may_act():
            return
        now = self._clock()
        ready = self._due(now)
        if ready and now >= self._proof_not_before:
            for host in await self._proven(ready, now):
                if self._may_act() and host in self.lost and not self._liveness.is_live(host):
                    await self._fail(host)
        await self._restart(now)

    def _due(self, now: float) -> list[str]:
        """Lost hosts whose fresh lease has certainly run out. One not armed
        may never have heard that HA is on: it is dropped, never restarted
        (its VMs stay as they are until it comes back or is declared dead)."""
        for host in [h for h in self.lost if self._liveness.is_live(h)]:
            self.lost.pop(host, None)
        due = [host for host, lost_at in self.lost.items()
               if now >= fenced_by(lost_at, self._fence_after(host), self._detect_bound)]
        for host in [h for h in due if not self._armed(h)]:
            log.warning("HA: host %s is lost but never acknowledged that HA is on (it may "
                        "not fence): its VMs are not restarted (DeclareDead restarts them)",
                        host)
            self.lost.pop(host, None)
            due.remove(host)
        return due

    async def _proven(self, ready: list[str], now: float) -> set[str]:
        """The quorum proof (ha_quorum.py) for the longest hold any of them may
        have, against every witness list each may hold."""
        hosts = self._store.list("host")
        if not has_quorum(self._liveness.acknowledged_count, len(hosts)):
            return set()
        needed = max(hold_bound(self._fence_after(h), self._transport_bound, self._detect_bound)
                     for h in ready)
        lists = {h: self._may_hold(h) for h in ready}
        proven = await self._proof.proven(lists, set(self.lost), needed)
        if set(ready) - proven:
            self._proof_not_before = now + PROOF_RETRY
        return proven

    async def _fail(self, host: str) -> None:
        from xcp_control.master.pool import halted_after_failure  # pool imports pool_ha
        from xcp_control.master.store import Put
        vms = self._resident(host)
        if vms:
            await self._store.commit([Put(halted_after_failure(vm, True)) for vm in vms])
            self._scan = True
            log.warning("HA: host %s has fenced: %d VMs set HALTED, %d to restart", host,
                        len(vms), sum(1 for vm in vms if vm.ha_restart_priority))
        self.lost.pop(host, None)

    async def _restart(self, now: float) -> None:
        if not self._scan and not len(self.pending):
            return
        marked = [vm for vm in self._store.list("vm") if vm.ha_restart_pending]
        self._scan = bool(marked)
        for vm in marked:
            if vm.power_state != dm.HALTED:  # started meanwhile (by us or by hand)
                await self._clear(vm)
        waiting = [vm for vm in marked if vm.power_state == dm.HALTED]
        restart, best_effort, _ = restart_sequence(waiting)
        self.pending.add(vm.uuid for vm in restart + best_effort)
        # Placed in order, booted together: each start runs up to its first
        # await (placement and the memory reservation) in the order given.
        await asyncio.gather(*(self._start(vm.uuid, now) for vm in restart))
        if not any(getattr(self._store.get("vm", vm.uuid), "ha_restart_pending", False)
                   for vm in restart):
            await asyncio.gather(*(self._start(vm.uuid, now) for vm in best_effort))

    async def _start(self, uuid: str, now: float) -> None:
        retry = self.pending.retries.get(uuid)
        if retry is None or not retry.ready(now):
            return
        try:
            started = await self._lifecycle.start_vm(uuid, "", False, None, ha_restart=True)
        except XcpError as exc:
            self.pending.failed(uuid, now)
            log.warning("HA: restart of VM %s failed (%s); retry in %.1fs", uuid, exc.reason,
                        self.pending.retries[uuid].not_before - now)
            return
        log.warning("HA: VM %s restarted on host %s", uuid, started.resident_on)
        await self._clear(started)

    async def _clear(self, vm: dm.VM) -> None:
        current = self._store.get("vm", vm.uuid)
        if current is not None and current.ha_restart_pending:
            out = copy(current)
            out.ha_restart_pending = False
            await self._store.put(out)
        self.pending.done(vm.uuid)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()  # before the pass: a poke during it means run again
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - keep restarting whatever one pass hit
                log.exception("HA restart pass failed")
            busy = bool(self.lost) or len(self.pending) > 0
            try:
                await asyncio.wait_for(self._wake.wait(), self._tick if busy else 5.0)
            except TimeoutError:
                pass
