"""The leader's proof, before an HA restart, that the lost hosts have fenced
(xcp_control/lease.py, rule 3).

A lost host may still hold its domains by the liveset rule if, lately, a
majority of its peers told it they do not hear the leader. The leader rules
that out by asking its own live hosts, on their heartbeat streams
(HeartbeatResponse.report_now): each answers at once with a report saying how
long it has seen that stream up (Beat.connected_for_ms). When a strict
majority of the pool's hosts answer with at least `needed` seconds, every
majority of the lost host's peers contains one that has answered "I hear the
leader" (PeerStatus) all that time. The leader's own view of its streams would
not do: a stream may have broken on the host's side a moment ago while ours
has not noticed yet, and in that moment the host tells its peers it does not
hear us. An answer that arrives on the stream proves the host still had it up
when it sent it.

The question is asked only when some host is due for restart, never per
beat, and rides the streams that are open anyway: no connection is made,
whatever the pool's size.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from xcp.v1 import liveness_service_pb2 as pb

log = logging.getLogger(__name__)

ANSWER_WAIT = 1.0  # seconds the leader waits for the hosts' answers

Push = Callable[[str, pb.HeartbeatResponse], None]


class _Round:
    """One question: who was asked, who vouched, when it is decided."""

    def __init__(self, asked: set[str], needed: float, majority: int) -> None:
        self.asked = asked
        self.needed = needed
        self.majority = majority
        self.vouched: set[str] = set()
        self.refused: set[str] = set()
        self.decided = asyncio.Event()

    def answer(self, host: str, connected_for: float) -> None:
        if host not in self.asked or host in self.vouched or host in self.refused:
            return
        (self.vouched if connected_for >= self.needed else self.refused).add(host)
        if len(self.vouched) >= self.majority \
                or len(self.asked) - len(self.refused) < self.majority:
            self.decided.set()


class QuorumProof:
    """Asks the live hosts on their streams; says whether a majority vouches.
    `push` (send a message on a host's open stream) is set by the wiring, and
    `on_vouch` is the heartbeat sessions' listener for the answers."""

    def __init__(self, liveness, wait: float = ANSWER_WAIT) -> None:
        self._liveness = liveness
        self._wait = wait
        self.push: Push | None = None
        self._round: _Round | None = None

    def on_vouch(self, host: str, connected_for: float) -> None:
        if self._round is not None:
            self._round.answer(host, connected_for)

    async def holds(self, pool: Iterable[str], lost: set[str], needed: float) -> bool:
        """A strict majority of the hosts in `pool` answer that they have seen
        their stream up for at least `needed` seconds (`lost` ones are not asked)."""
        hosts = list(pool)
        majority = len(hosts) // 2 + 1
        asked = {h for h in hosts if h not in lost and self._liveness.acknowledged(h)}
        if len(asked) < majority or self.push is None:
            return False
        round_ = self._round = _Round(asked, needed, majority)
        try:
            for host in asked:
                self.push(host, pb.HeartbeatResponse(report_now=True))
            try:
                await asyncio.wait_for(round_.decided.wait(), self._wait)
            except TimeoutError:
                pass
        finally:
            self._round = None
        if len(round_.vouched) >= majority:
            return True
        log.info("HA: %d of %d hosts vouch for %.1fs of connection (%d needed): no restart "
                 "yet", len(round_.vouched), len(hosts), needed, majority)
        return False
