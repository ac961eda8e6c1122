"""When and in what order the leader restarts the VMs of a failed host
(xapi's HA restart), as plain logic on an injected monotonic clock.

A host is restartable once it must have fenced: the lease rule counts from
the moment the leader saw the host's heartbeat stream end (`lost_at`) less the
leader's own detection bound, which the slave subtracts too
(slave/self_fence.py), plus fence_after and a margin for clock rates and
scheduling. DeclareDead is the operator asserting the fence: restartable at
once. A leader that hears from no majority of hosts restarts nothing (it may
be the one cut off).

The order: RESTART VMs by ha_restart_order (then uuid), then BEST_EFFORT the
same way; unprotected VMs are only set HALTED (they died with the fence).
Failed starts are retried with exponential backoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from xcp.v1 import datamodel_pb2 as dm

RATE_MARGIN = 0.01  # clocks may run 1 % apart over fence_after (NTP keeps them far closer)
FIXED_MARGIN = 0.25  # seconds: the slave's fence check tick and the destroy itself
RETRY_FIRST = 1.0  # seconds before the first retry of a failed start
RETRY_CAP = 30.0  # longest wait between two retries


def fenced_by(lost_at: float, fence_after: float, detect_bound: float) -> float:
    """The moment (leader's clock) after which a host silent since `lost_at`
    has certainly fenced."""
    return lost_at - detect_bound + fence_after * (1 + RATE_MARGIN) + FIXED_MARGIN


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
