"""HA's lease rule, the arithmetic both sides count by (DESIGN.md, "VM
restart after a host failure"). A VM never runs twice because the leader
restarts a lost host's VMs only after that host must have fenced; that holds
only if the slave's clock arithmetic (slave/self_fence.py, slave/ha_guard.py)
and the leader's (master/ha_restart.py) agree, so both read it here.

Names, all in seconds on each side's own monotonic clock:
- `detect_bound` (db): how late the leader may notice a silent host: its
  dead_after (PING interval + PING timeout).
- `transport_bound` (tb): how stale the slave's own view of "my stream is
  open" may be: its channel's keepalive time + timeout (three PING intervals).
- `fence_after` (fa): the host's lease length.

1. A fresh lease. The slave counts from `seen_open - tb - db` (it saw its
   stream open at `seen_open`; the leader acknowledged it no earlier than
   `seen_open - tb`) and fences fa later unless the liveset rule says keep.
   The leader counts from the moment it saw the stream end less db, plus a
   margin: `fenced_by`. Both sides shift by db, so the leader restarts about
   fa after the failure rather than fa after noticing it.
2. A held lease. When its lease runs out and a strict majority of its
   witness list (master/ha_witness.py: at most K other hosts, the list the
   leader gave it) is reached, none hearing the leader (the master tier is
   down, not this host: xapi's liveset rule), the slave keeps its domains and
   asks again every
   `hold_extension`. When an answer no longer says keep, a slave that was
   holding may have been left behind by the others' reconnect: it reconnects
   at once and fences unless the leader has acknowledged it within
   REJOIN_WINDOW. So a holding slave has fenced or rejoined at most
   `hold_bound` after the last moment some peer could have told it "keep".
3. What the leader proves before a restart (master/ha_quorum.py): for every
   witness list the lost host may hold (the leader records, durably, the one
   it acknowledged and the one sent since: master/ha_config.py), a strict
   majority of that list, asked then, say their stream has been connected
   without a break for at least `hold_bound`. Each of them answered "I hear
   the leader" to every peer meanwhile, and any majority of that list
   contains one of them, so no "keep" was given in that time: the lost host
   has fenced (or is inside a fresh lease that `fenced_by` covers). The
   leader also hears a strict majority of the pool, and restarts only a host
   armed for the current HA generation (it acknowledged that HA is on: one
   that never heard it never fences). A slave told HA is on starts its lease
   then (slave/ha_guard.py): the leader counts it from a loss after its
   acknowledgement.
   In a steady pool every host has been connected for hours and the proof
   costs one round of questions to at most 2 x K witnesses; after a master
   restart or a failover it holds restarts back until the witnesses have
   been back for `hold_bound`.
"""

from __future__ import annotations

TICK = 0.25  # seconds between two checks of the slave's lease
PEER_DEADLINE = 0.5  # seconds a peer (or the leader's question) gets for PeerStatus
REJOIN_WINDOW = 2.0  # seconds a slave that was holding gets to be acknowledged again
# The slave decides at its first tick past the deadline, after asking its
# peers: its fence may come this much after the deadline.
DECISION_DELAY = TICK + PEER_DEADLINE
RATE_MARGIN = 0.01  # clocks may run 1 % apart over fence_after (NTP keeps them far closer)
FIXED_MARGIN = 0.25  # seconds: the destroy itself, and scheduling


def lease_origin(seen_open: float, transport_bound: float, detect_bound: float) -> float:
    """Where the slave counts its lease from, having seen its stream open at
    `seen_open` (slave's clock)."""
    return seen_open - transport_bound - detect_bound


def fenced_by(lost_at: float, fence_after: float, detect_bound: float) -> float:
    """The moment (leader's clock) after which a host whose stream the leader
    saw end at `lost_at` has certainly run out of its fresh lease, and acted
    on it (DECISION_DELAY)."""
    return (lost_at - detect_bound + fence_after * (1 + RATE_MARGIN) + DECISION_DELAY
            + FIXED_MARGIN)


def hold_extension(fence_after: float, transport_bound: float, detect_bound: float) -> float:
    """How long a slave keeps its domains on one "keep" answer before it asks
    again (at least one tick)."""
    return max(fence_after - transport_bound - detect_bound, TICK)


def hold_bound(fence_after: float, transport_bound: float, detect_bound: float) -> float:
    """The longest a holding slave keeps its domains after the last moment a
    peer could have said "keep": one extension, the question itself, two
    ticks, the rejoin window, and the margins (a host watchdog may let the
    host live DECISION_DELAY + 0.2 s past a deadline: slave/watchdog.py)."""
    extension = hold_extension(fence_after, transport_bound, detect_bound)
    return (extension * (1 + RATE_MARGIN) + PEER_DEADLINE + 2 * TICK + REJOIN_WINDOW
            + DECISION_DELAY + FIXED_MARGIN)
