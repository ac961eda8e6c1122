"""The HA failover plan: how many host failures the pool can take with every
RESTART VM restarted (xapi's `ha_plan_exists_for`; memory-based, as xapi's
planner).

A pool survives the failure of a set of hosts when the RESTART VMs resident on
them can all be placed, one by one and largest first, the way placement would
place them (onto the live, enabled host with the most free memory), into the
memory the surviving hosts have free. The plan survives k failures when every
set of k hosts does. Every set is checked while there are few
(C(n, k) <= MAX_EXACT_SETS); beyond that, the sets a failure hurts most: the k
hosts holding the most protected memory, and the k hosts with the most free
memory (losing them removes the most room). That keeps the check cheap at any
pool size and exact for the pools people run HA on (xapi's planner is a
heuristic too).

Pure logic: the caller passes a snapshot (hosts that are live and enabled,
protected VMs and where they run).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

MAX_EXACT_SETS = 2_000  # sets of failed hosts checked one by one before the heuristic


@dataclass(frozen=True)
class PlanHost:
    """A live, enabled host that can take restarted VMs."""

    uuid: str
    free_memory: int  # bytes free now: total less every VM resident on it


@dataclass(frozen=True)
class PlanVM:
    """A RESTART VM: what must find room again if its host fails."""

    uuid: str
    memory: int
    host: str  # where it runs now (resident_on)


def survives(hosts: Sequence[PlanHost], protected: Sequence[PlanVM],
             failed: frozenset[str]) -> bool:
    """Whether the RESTART VMs of the `failed` hosts fit on the others."""
    free = {h.uuid: h.free_memory for h in hosts if h.uuid not in failed}
    for vm in sorted((v for v in protected if v.host in failed),
                     key=lambda v: (-v.memory, v.uuid)):
        if not free:
            return False
        target = max(free, key=lambda u: (free[u], u))  # placement: the most free memory
        if free[target] < vm.memory:
            return False
        free[target] -= vm.memory
    return True


def _worst_sets(hosts: Sequence[PlanHost], protected: Sequence[PlanVM],
                k: int) -> Iterable[frozenset[str]]:
    if math.comb(len(hosts), k) <= MAX_EXACT_SETS:
        yield from (frozenset(c) for c in itertools.combinations([h.uuid for h in hosts], k))
        return
    load: dict[str, int] = {}
    for vm in protected:
        load[vm.host] = load.get(vm.host, 0) + vm.memory
    by_load = sorted(hosts, key=lambda h: (-load.get(h.uuid, 0), h.uuid))
    by_room = sorted(hosts, key=lambda h: (-h.free_memory, h.uuid))
    yield frozenset(h.uuid for h in by_load[:k])
    yield frozenset(h.uuid for h in by_room[:k])


def plan_exists_for(hosts: Sequence[PlanHost], protected: Sequence[PlanVM]) -> int:
    """The largest k (at most one less than the hosts) such that any k hosts
    may fail with every RESTART VM restarted; 0 when even one failure is too
    many (or the pool has one host). RESTART VMs not resident on one of
    `hosts` (halted, or on a host already down) are ignored: they are not
    running on a host that could fail."""
    known = {h.uuid for h in hosts}
    running = [v for v in protected if v.host in known]
    best = 0
    for k in range(1, len(hosts)):
        if not all(survives(hosts, running, failed) for failed in _worst_sets(hosts, running, k)):
            break
        best = k
    return best
