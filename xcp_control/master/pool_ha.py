"""The pool's HA settings and failover plan (xapi's pool.ha_* fields).

The settings live in the store as the one `pool` object (uuid = the store's
database id): `ha_enabled` and `ha_host_failures_to_tolerate`, durable like
every other object and replicated with it on etcd. The plan is computed when
asked (ha_plan.py), from the live, enabled hosts and the RESTART VMs resident
on them; with a failures-to-tolerate set, `check_start` and `check_update`
refuse what would lower the plan below it
(HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN).
"""

from __future__ import annotations

from xcp_control import errors, validation
from xcp_control.master import ha_plan
from xcp_control.master.liveness import Liveness
from xcp_control.master.store import Store
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm

RESIDENT = (dm.RUNNING, dm.PAUSED)
MAX_FAILURES = 1_000


class PoolHa:
    """Reads and changes the pool's HA settings; answers the plan."""

    def __init__(self, store: Store, liveness: Liveness) -> None:
        self._store = store
        self._liveness = liveness

    # -- settings ------------------------------------------------------------

    def settings(self) -> dm.Pool:
        """The stored pool object (defaults: HA off) - shared, read-only."""
        return self._store.get("pool", self._store.db_id) or dm.Pool(uuid=self._store.db_id)

    @property
    def enabled(self) -> bool:
        return self.settings().ha_enabled

    async def configure(self, enabled: bool, failures_to_tolerate: int) -> dm.Pool:
        """SetHaConfig: durable before it answers. Each switch-on starts a
        new generation, which the hosts acknowledge (ha_config.py: armed)."""
        pool = copy(self.settings())
        if enabled and not pool.ha_enabled:
            pool.ha_generation += 1
        pool.ha_enabled = enabled
        pool.ha_host_failures_to_tolerate = validation.count(
            "host_failures_to_tolerate", failures_to_tolerate, 0, MAX_FAILURES)
        await self._store.put(pool)
        return pool

    # -- the plan ------------------------------------------------------------

    def plan_exists_for(self, change: dm.VM | None = None) -> int:
        """Failures the plan survives now, or once `change` (a VM as it would
        be after a start or an update) is in place."""
        vms = {vm.uuid: vm for vm in self._store.list("vm")}
        if change is not None:
            vms[change.uuid] = change
        used: dict[str, int] = {}
        for vm in vms.values():
            if vm.power_state in RESIDENT:
                used[vm.resident_on] = used.get(vm.resident_on, 0) + vm.memory
        hosts = [ha_plan.PlanHost(h.uuid, self._memory_total(h) - used.get(h.uuid, 0))
                 for h in self._store.list("host")
                 if h.enabled and self._liveness.is_live(h.uuid)]
        protected = [ha_plan.PlanVM(vm.uuid, vm.memory, vm.resident_on) for vm in vms.values()
                     if vm.ha_restart_priority == dm.RESTART and vm.power_state in RESIDENT]
        return ha_plan.plan_exists_for(hosts, protected)

    def _memory_total(self, host: dm.Host) -> int:
        metrics = self._store.get("host_metrics", host.metrics)
        return metrics.memory_total if metrics is not None else 0

    def _check(self, change: dm.VM) -> None:
        pool = self.settings()
        wanted = pool.ha_host_failures_to_tolerate
        if not pool.ha_enabled or not wanted:
            return
        after = self.plan_exists_for(change)
        if after < wanted and after < self.plan_exists_for():
            raise errors.ha_operation_would_break_failover_plan(change.uuid)

    def check_start(self, vm: dm.VM, target: str) -> None:
        """Before starting `vm` on `target` (placement's choice)."""
        started = copy(vm)
        started.power_state, started.resident_on = dm.RUNNING, target
        self._check(started)

    def check_update(self, before: dm.VM, after: dm.VM) -> None:
        """Before an UpdateVM that may protect a VM or grow a protected one."""
        if after.ha_restart_priority != before.ha_restart_priority or \
                after.memory != before.memory:
            self._check(after)

    def describe(self, pool: dm.Pool) -> None:
        """Fill GetPool's HA fields."""
        settings = self.settings()
        pool.ha_enabled = settings.ha_enabled
        pool.ha_generation = settings.ha_generation
        pool.ha_host_failures_to_tolerate = settings.ha_host_failures_to_tolerate
        pool.ha_plan_exists_for = self.plan_exists_for()
