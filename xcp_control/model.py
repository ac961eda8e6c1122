"""Small helpers over the datamodel that master and slave share: power-state
names, copy-then-set, and the digest of a domain list (the slave sends it, the
master compares it with its own)."""

from __future__ import annotations

import hashlib
from typing import Iterable, Protocol, TypeVar

from google.protobuf.message import Message

from xcp.v1 import datamodel_pb2 as dm

RUNNING, PAUSED, HALTED, SUSPENDED = dm.RUNNING, dm.PAUSED, dm.HALTED, dm.SUSPENDED

M = TypeVar("M", bound=Message)


def state_name(state: int) -> str:
    """The PowerState name used in errors and logs ("RUNNING"); an unknown
    number is shown as itself rather than raising."""
    return dm.PowerState.Name(state) if state in dm.PowerState.values() else str(state)


def state_names(states: Iterable[int]) -> str:
    """Several accepted states, as VM_BAD_POWER_STATE's `expected`: "RUNNING|PAUSED"."""
    return "|".join(state_name(s) for s in states)


def copy(obj: M) -> M:
    """A private copy of a message, to change without touching a shared one."""
    out = type(obj)()
    out.CopyFrom(obj)
    return out


def with_state(vm: dm.VM, state: int) -> dm.VM:
    """A copy of vm in `state`, resident where it was."""
    out = copy(vm)
    out.power_state = state
    return out


def halted(vm: dm.VM) -> dm.VM:
    """A copy of vm, HALTED and resident nowhere."""
    out = copy(vm)
    out.power_state, out.resident_on = HALTED, ""
    return out


class _HasUuidAndState(Protocol):
    vm_uuid: str
    state: int


def domains_digest(domains: Iterable[_HasUuidAndState]) -> str:
    """A short, stable digest of a domain list: equal for equal (vm_uuid, state)
    sets whatever the order. Accepts the slave's DomainInfo or a proto Domain
    alike, so the master computes the same value from the list it holds."""
    lines = sorted(f"{d.vm_uuid}:{state_name(d.state)}" for d in domains)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
