"""Witness sets: which few hosts each host asks when it loses the leader
(the liveset rule), and what the leader must know of them to prove, before
an HA restart, that the host has fenced (xcp_control/lease.py, rule 3).

Why not the whole pool. The liveset rule is a majority rule: a slave that
lost the leader keeps its domains only on reaching a strict majority of ITS
list, none hearing the leader; the leader restarts its VMs only once a strict
majority of THAT list vouch that they heard the leader throughout
(`hold_bound`): two majorities of one list intersect, so no keep was given.
With the pool's whole peer list that needs every slave to hold the current
list of every host (O(hosts) per slave, O(hosts^2) to deliver: 5.7 GB and
about 3 minutes at 10,000 hosts, BENCHMARKS.md), and a slave cut off while
holding a stale, short list could keep its domains by a majority of that list
while the leader, counting the whole pool, restarted them. The rule needs
only that the leader knows the lists exactly, not that they are long: so each
host S gets a small, stable set W_S of at most K other hosts, and the leader
records, durably on S's Host record, the version S acknowledged applying and
the one sent but not yet acknowledged (S may hold either; the proof needs a
majority of each). A new leader reads them from the store.

Choice (`choose`): the hosts with a SlaveService address other than S, ranked
by their distance after S on a hash ring (a rendezvous-style score per (S, h):
`(point(h) - point(S)) mod 2**64`, point = a 64-bit blake2b of the uuid); the
top K. Plain rendezvous hashing (top K of hash(S, h)) scores every host for
each choice: O(hosts) per host, 10^8 hashes when HA is switched on at 10,000
hosts; the ring distance is the same kind of per-pair score, found by a
bisection, O(K + log hosts). Stability: a set is only ever grown while below
K (a pool of at most K + 1 hosts: everyone else, as the whole list was), and
a member is replaced only when it leaves the pool or loses its address. Dead
members are kept: replacing them would need S's acknowledgement anyway (the
leader must keep proving against what S may hold), and a host that is lost
cannot acknowledge, so replacing them would not help the host that needs it;
a host that lost a majority of its witnesses at once (more than K/2 = 16 down
together, while the leader still hears a majority of the pool) waits for
them, or for the operator's DeclareDead.

Load: each host is a witness of about K hosts; the first hosts of a pool
that was joined with HA on are picked more often (about K * ln(hosts / K) at
most: ~180 at 10,000), as with any stable choice made as the pool grows.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from xcp.v1 import datamodel_pb2 as dm

K = 32  # witnesses per host at most


def point(uuid: str) -> int:
    """The host's place on the ring."""
    return int.from_bytes(hashlib.blake2b(uuid.encode(), digest_size=8).digest(), "big")


class Ring:
    """The hosts with a SlaveService address, in ring order."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        self._points: list[tuple[int, str]] = sorted((point(h), h) for h in set(hosts))
        self._members = {h for _, h in self._points}

    def __contains__(self, host: str) -> bool:
        return host in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, host: str) -> bool:
        if host in self._members:
            return False
        bisect.insort(self._points, (point(host), host))
        self._members.add(host)
        return True

    def remove(self, host: str) -> bool:
        if host not in self._members:
            return False
        self._points.pop(bisect.bisect_left(self._points, (point(host), host)))
        self._members.discard(host)
        return True

    def after(self, host: str) -> Iterator[str]:
        """The other hosts, nearest after `host` first, once round the ring."""
        n = len(self._points)
        start = bisect.bisect_right(self._points, (point(host), host))
        for i in range(n):
            member = self._points[(start + i) % n][1]
            if member != host:
                yield member


def choose(host: str, current: Sequence[str], ring: Ring, k: int = K) -> tuple[str, ...]:
    """The host's witness set: `current` less the members gone from the ring,
    grown from the ring while below k (sorted)."""
    kept = {h for h in current if h in ring and h != host}
    if len(kept) < k:
        for candidate in ring.after(host):
            if len(kept) >= k:
                break
            kept.add(candidate)
    return tuple(sorted(kept))


@dataclass(frozen=True)
class Witnesses:
    """What the leader knows of one host's witness lists (its Host record)."""

    acked_version: int = 0  # with an empty list: the host holds none
    acked: tuple[str, ...] = ()
    pending_version: int = 0  # 0: nothing sent and unacknowledged
    pending: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: dm.Host | None) -> "Witnesses":
        if record is None:
            return cls()
        return cls(record.ha_witness_version, tuple(record.ha_witnesses),
                   record.ha_witness_pending_version, tuple(record.ha_witnesses_pending))

    def store_in(self, record: dm.Host) -> None:
        record.ha_witness_version = self.acked_version
        del record.ha_witnesses[:]
        record.ha_witnesses.extend(self.acked)
        record.ha_witness_pending_version = self.pending_version
        del record.ha_witnesses_pending[:]
        record.ha_witnesses_pending.extend(self.pending)

    @property
    def latest(self) -> tuple[int, tuple[str, ...]]:
        """The newest list: the one to (re)send."""
        if self.pending_version:
            return self.pending_version, self.pending
        return self.acked_version, self.acked

    def may_hold(self) -> list[tuple[str, ...]]:
        """Every list the host may hold now. An empty list asks nothing: a
        host holding none fences on a lost lease (slave/self_fence.py)."""
        lists = [self.acked] if self.acked_version and self.acked else []
        if self.pending_version and self.pending:
            lists.append(self.pending)
        return lists

    def want(self, members: tuple[str, ...]) -> "Witnesses | None":
        """The leader wants the host to hold `members`: the new state (a new
        pending version, to be made durable and then sent), or None when
        there is nothing to send yet (it holds them already, or a version is
        pending: one at a time, so the host holds one of two at most)."""
        if members == self.latest[1] or self.pending_version:
            return None
        version = max(self.acked_version, self.pending_version) + 1
        return Witnesses(self.acked_version, self.acked, version, members)

    def reported(self, version: int, hello: bool) -> "Witnesses":
        """The host says it holds `version` (a report acknowledging a config,
        or its Hello). The pending one acknowledged becomes the acknowledged
        one. A Hello also says what the host will never apply: nothing from
        its old stream (it is gone), so a version it does not name is
        dropped; holding none (0: a fresh process) clears both."""
        if version and version == self.pending_version:
            return Witnesses(self.pending_version, self.pending)
        if not hello:
            return self
        if version and version == self.acked_version:
            return Witnesses(self.acked_version, self.acked)
        if version == 0:
            # It holds none. The numbering goes on from the highest version
            # used (kept as an empty acknowledged list): never one twice.
            return Witnesses(max(self.acked_version, self.pending_version), ())
        return self  # a version we never recorded: believe only what we know


def majority_vouches(members: Sequence[str], vouched: set[str]) -> bool:
    """A strict majority of `members` vouched."""
    return 2 * sum(1 for m in members if m in vouched) > len(members)


def can_still_reach(members: Sequence[str], refused: set[str]) -> bool:
    """A strict majority of `members` may still vouch."""
    return 2 * sum(1 for m in members if m not in refused) > len(members)
