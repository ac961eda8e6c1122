"""Where a VM starts: the host asked for, or one chosen by placement.

Pure logic over a snapshot of the pool, so every rule is tested without a
network. A host's free memory is its total less the memory of the VMs the
master has resident on it and of starts still in flight there (reservations),
so two concurrent starts cannot both take the last gigabyte.
"""

from __future__ import annotations

from dataclasses import dataclass

from xcp_control import errors


@dataclass(frozen=True)
class Candidate:
    """What placement needs to know of one host."""

    uuid: str
    live: bool
    enabled: bool
    free_memory: int  # bytes: total less resident VMs less reservations


def check_host(vm: str, memory: int, host: Candidate) -> None:
    """The errors an explicit target host can give, in xapi's order."""
    if not host.live:
        raise errors.host_offline(host.uuid)
    if not host.enabled:
        raise errors.host_disabled(host.uuid)
    if host.free_memory < memory:
        raise errors.host_not_enough_free_memory(vm, host.uuid)


def choose(vm: str, memory: int, affinity: str, hosts: list[Candidate]) -> str:
    """A live, enabled host with room: the affinity host when it fits, else the
    one with the most free memory (ties by uuid, so the choice is stable)."""
    fits = [h for h in hosts if h.live and h.enabled and h.free_memory >= memory]
    if not fits:
        raise errors.no_hosts_available(vm)
    for host in fits:
        if host.uuid == affinity:
            return host.uuid
    return min(fits, key=lambda h: (-h.free_memory, h.uuid)).uuid
