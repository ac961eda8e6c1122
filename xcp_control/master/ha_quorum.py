"""The leader's proof, before an HA restart, that the lost hosts have fenced
(xcp_control/lease.py, rule 3).

A lost host may still hold its domains by the liveset rule if, lately, a
majority of its peers told it they do not hear the leader. The leader rules
that out by asking its own live hosts (SlaveService.PeerStatus): when a strict
majority of the pool's hosts say their stream has been connected without a
break for at least `needed` seconds, every majority of the lost host's peers
contains one that has answered "I hear the leader" all that time. Counting our
own streams would not do: a host's stream may have broken on its side a
moment ago while ours has not noticed yet, and in that moment it tells its
peers it does not hear us.

The question goes out only when some host is due for restart, not per beat;
at most CONCURRENCY at a time, and it stops as soon as the answer is known.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable

from xcp_control.errors import XcpError
from xcp_control.lease import PEER_DEADLINE
from xcp.v1 import slave_service_pb2 as sl

log = logging.getLogger(__name__)

CONCURRENCY = 64  # PeerStatus questions in flight at once

# host -> seconds its stream has been connected (0: not connected), None: no answer
Ask = Callable[[str], Awaitable[float | None]]


def forwarded_ask(forwarder) -> Ask:
    """PeerStatus over the forwarder's pooled channels, within PEER_DEADLINE."""
    async def ask(host: str) -> float | None:
        try:
            answer = await forwarder.call(host, "PeerStatus", sl.PeerStatusRequest(),
                                          operation="PeerStatus", timeout=PEER_DEADLINE,
                                          budget=None)
        except XcpError:
            return None
        return answer.connected_for_ms / 1000 if answer.hears_leader else 0.0
    return ask


class QuorumProof:
    """Asks the live hosts; says whether a majority of the pool vouches."""

    def __init__(self, liveness, ask: Ask, concurrency: int = CONCURRENCY) -> None:
        self._liveness = liveness
        self._ask = ask
        self._concurrency = concurrency

    async def holds(self, pool: Iterable[str], lost: set[str], needed: float) -> bool:
        """A strict majority of the hosts in `pool` answer that they have been
        connected for at least `needed` seconds (the `lost` ones are not asked)."""
        hosts = list(pool)
        majority = len(hosts) // 2 + 1
        candidates = [h for h in hosts if h not in lost and self._liveness.acknowledged(h)]
        if len(candidates) < majority:
            return False
        vouched, refused = 0, 0
        gate = asyncio.Semaphore(self._concurrency)

        async def one(host: str) -> bool:
            async with gate:
                connected_for = await self._ask(host)
            return connected_for is not None and connected_for >= needed

        tasks = [asyncio.ensure_future(one(h)) for h in candidates]
        try:
            for done in asyncio.as_completed(tasks):
                if await done:
                    vouched += 1
                else:
                    refused += 1
                if vouched >= majority:
                    return True
                if len(candidates) - refused < majority:
                    break
        finally:
            for task in tasks:
                task.cancel()
        log.info("HA: %d of %d hosts vouch for %.1fs of connection (%d needed): no restart "
                 "yet", vouched, len(hosts), needed, majority)
        return False
