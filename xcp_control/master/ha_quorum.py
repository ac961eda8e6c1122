"""The leader's proof, before an HA restart, that the lost hosts have fenced
(xcp_control/lease.py, rule 3).

A lost host S may still hold its domains by the liveset rule if, lately, a
strict majority of ITS witness list (master/ha_witness.py) told it they do
not hear the leader. The leader rules that out by asking those witnesses, on
their heartbeat streams (HeartbeatResponse.report_now): each answers at once
with a report saying how long it has seen that stream up
(Beat.connected_for_ms). When a strict majority of a list answers with at
least `needed` seconds, every majority of that list contains one that has
answered "I hear the leader" (PeerStatus) all that time, so S was given no
"keep" by that list. S may hold two lists (the one it acknowledged and one
sent since, ha_config.py): the proof needs a strict majority of each. The
leader's own view of its streams would not do: a stream may have broken on
the host's side a moment ago while ours has not noticed yet, and in that
moment the host tells its peers it does not hear us. An answer that arrives
on the stream proves the host still had it up when it sent it.

A host that holds no list fences on a lost lease: nothing to prove for it
(the restarter still needs a majority of the pool acknowledged, and the
host armed: ha_restart.py).

The question is asked only when some host is due for restart, never per
beat, of the lost hosts' witnesses only (at most 2 x K each), on the streams
that are open anyway: no connection is made, whatever the pool's size.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping, Sequence

from xcp_control.master.ha_witness import can_still_reach, majority_vouches
from xcp.v1 import liveness_service_pb2 as pb

log = logging.getLogger(__name__)

ANSWER_WAIT = 1.0  # seconds the leader waits for the hosts' answers

Push = Callable[[str, pb.HeartbeatResponse], None]
Lists = Mapping[str, Sequence[Sequence[str]]]  # lost host -> every list it may hold


class _Round:
    """One question: who was asked, who vouched, when it is decided."""

    def __init__(self, asked: set[str], needed: float, lists: Lists) -> None:
        self.asked = asked
        self.needed = needed
        self.lists = lists
        self.vouched: set[str] = set()
        self.refused: set[str] = set()  # answered too short, or not asked
        self.decided = asyncio.Event()
        self._check()

    def proven(self) -> set[str]:
        return {h for h, lists in self.lists.items()
                if all(majority_vouches(m, self.vouched) for m in lists)}

    def _open(self, host: str) -> bool:
        """Not decided yet for `host`: some list lacks a majority but may get one."""
        lists = self.lists[host]
        return not all(majority_vouches(m, self.vouched) for m in lists) \
            and all(can_still_reach(m, self.refused) for m in lists)

    def _check(self) -> None:
        if not any(self._open(h) for h in self.lists):
            self.decided.set()

    def answer(self, host: str, connected_for: float) -> None:
        if host not in self.asked or host in self.vouched or host in self.refused:
            return
        (self.vouched if connected_for >= self.needed else self.refused).add(host)
        self._check()


class QuorumProof:
    """Asks the lost hosts' witnesses on their streams; says for which lost
    hosts a majority of every list vouches. `push` (send a message on a
    host's open stream) is set by the wiring, and `on_vouch` is the heartbeat
    sessions' listener for the answers."""

    def __init__(self, liveness, wait: float = ANSWER_WAIT) -> None:
        self._liveness = liveness
        self._wait = wait
        self.push: Push | None = None
        self._round: _Round | None = None

    def on_vouch(self, host: str, connected_for: float) -> None:
        if self._round is not None:
            self._round.answer(host, connected_for)

    async def proven(self, lists: Lists, lost: set[str], needed: float) -> set[str]:
        """The lost hosts (keys of `lists`) for which a strict majority of
        every list they may hold answer that they have seen their stream up
        for at least `needed` seconds. Lost hosts, and hosts that have not
        said Hello to this leader, are not asked (they count against)."""
        members = {m for host_lists in lists.values() for ms in host_lists for m in ms}
        asked = {m for m in members if m not in lost and self._liveness.acknowledged(m)}
        round_ = _Round(asked, needed, lists)
        round_.refused |= members - asked
        round_._check()
        if asked and self.push is not None and not round_.decided.is_set():
            self._round = round_
            try:
                for host in asked:
                    self.push(host, pb.HeartbeatResponse(report_now=True))
                try:
                    await asyncio.wait_for(round_.decided.wait(), self._wait)
                except TimeoutError:
                    pass
            finally:
                self._round = None
        proven = round_.proven()
        if proven != set(lists):
            log.info("HA: %d of %d asked witnesses vouch for %.1fs of connection: no "
                     "restart yet of %d hosts", len(round_.vouched), len(asked), needed,
                     len(set(lists) - proven))
        return proven
