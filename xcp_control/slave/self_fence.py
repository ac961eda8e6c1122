"""Self-fencing (xapi's HA watchdog): a slave that has lost the leader's
acknowledgement for `fence_after` destroys its domains itself, so that the
leader may restart them elsewhere without them ever running twice.

The lease rule (DESIGN.md, "VM restart after a host failure"; the
arithmetic both sides share is xcp_control/lease.py): what counts as an
acknowledgement is the heartbeat stream itself being healthy (README, "What a
slave may conclude"). The slave counts from `lease_origin` of the last moment
it saw its stream open, and fences fence_after later.

The liveset rule (xapi): a slave that lost the leader asks its peers (its
witness list, at most 32 hosts the leader chose and recorded:
master/ha_witness.py). If it reaches a strict majority of that list and
none hears the leader, the problem is the
master tier (or etcd), not this host: it keeps its domains and asks again one
`hold_extension` later (the lease is then *held*). Otherwise (it is cut off,
or others hear the leader) it fences; a slave that was holding first gets the
rejoin window (ha_guard.py), because after a master-tier outage its peers may
simply have reconnected before it.

Pure logic on an injected monotonic clock; slave/heartbeat.py feeds it and
slave/service.py asks it before every domain operation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from xcp_control.lease import hold_extension, lease_origin


@dataclass(frozen=True)
class HaConfig:
    """What the leader tells each slave about HA (with its Hello answer)."""

    enabled: bool = False
    fence_after: float = 10.0  # seconds without acknowledgement before self-fencing
    detect_bound: float = 3.0  # the leader's PING interval + timeout: how late it may notice
    epoch: int = 0  # the leader's epoch the config came with
    # (uuid, SlaveService address) of the host's witnesses (master/ha_witness.py):
    # the liveset rule needs a strict majority of this list.
    peers: tuple[tuple[str, str], ...] = ()
    generation: int = 0  # the Pool.ha_generation it belongs to, with HA on
    witness_version: int = 0  # the version of `peers` (0: none)


class Verdict(enum.Enum):
    """What the liveset rule says about a slave that lost the leader."""

    FENCE = "fence"  # this host is cut off: destroy the domains
    KEEP = "keep"  # a majority of peers reached, none hears the leader: master tier down


def liveset_verdict(peers: int, reached: int, hearing_leader: int) -> Verdict:
    """`peers` other hosts, `reached` of them answered, `hearing_leader` of
    those still stream to the leader. With no peers at all, a lone host cannot
    tell its own isolation from the master's: it fences (the safe side)."""
    if peers and reached * 2 > peers and hearing_leader == 0:
        return Verdict.KEEP
    return Verdict.FENCE


class FenceLease:
    """The slave's side of the lease."""

    def __init__(self, transport_bound: float) -> None:
        self.transport_bound = transport_bound
        self.config = HaConfig()
        self._acked_from: float | None = None  # lease start: the latest safe count origin
        self._fenced = False
        self.held = False  # extended by the liveset rule since the last acknowledgement

    def configure(self, config: HaConfig, now: float) -> None:
        """A (new) HA config from the leader; receiving it is an acknowledgement."""
        self.config = config
        self.confirm(now)

    def confirm(self, now: float) -> None:
        """The stream to the leader is open now: the leader acknowledged this
        host no earlier than `now - transport_bound`."""
        self._acked_from = lease_origin(now, self.transport_bound, self.config.detect_bound)
        self._fenced = False
        self.held = False

    @property
    def fenced(self) -> bool:
        """Fenced and not acknowledged since: domain operations are refused."""
        return self._fenced

    def deadline(self) -> float | None:
        """When this host must have fenced, if HA is on and it was ever acknowledged."""
        if not self.config.enabled or self._acked_from is None:
            return None
        return self._acked_from + self.config.fence_after

    def due(self, now: float) -> bool:
        """The lease ran out: fence now (unless the liveset rule says keep)."""
        deadline = self.deadline()
        return not self._fenced and deadline is not None and now >= deadline

    def fence(self) -> None:
        """Record that the domains were destroyed; until the next confirm,
        domain operations are refused."""
        self._fenced = True

    def extend(self, now: float) -> None:
        """The liveset rule said keep (the master tier is down, not this host):
        hold the domains one hold_extension more, then ask again."""
        c = self.config
        self._acked_from = now + hold_extension(c.fence_after, self.transport_bound,
                                                c.detect_bound) - c.fence_after
        self.held = True
