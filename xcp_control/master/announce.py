"""A new leader calls its hosts over (several masters on etcd).

A leader that dies of SIGKILL closes its connections and slaves move on in
milliseconds; one SIGSTOPped (or partitioned) keeps them open, and a slave
would notice only when its heartbeat channel's keepalive gives up (seconds).
So a master that starts acting as leader calls SlaveService.FollowLeader on
every host it counts live that does not stream to it yet, with its epoch
(the Forwarder sets it) and its address: the slave, on that epoch or a newer
one, leaves its stream at once and connects here; an older epoch is refused
(STALE_MASTER, slave/fencing.py), so a deposed leader moves nobody.

Cheap at 10,000 hosts: a fixed number of workers (`concurrency`) take hosts
from one queue, each call has a short deadline, a host that connected by
itself meanwhile is skipped, and stopping acting cancels the round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Awaitable, Callable, Iterable

from xcp_control.errors import XcpError

log = logging.getLogger(__name__)

CONCURRENCY = 64  # calls in flight at once
CALL_TIMEOUT = 0.5  # seconds each host gets to answer

Call = Callable[[str], Awaitable[bool]]  # host uuid -> moved (raises XcpError)


class LeaderAnnouncer:
    """One round of FollowLeader calls per start of a term; plain asyncio."""

    def __init__(self, hosts: Callable[[], Iterable[str]], streaming: Callable[[str], bool],
                 call: Call, concurrency: int = CONCURRENCY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hosts = hosts  # the hosts this leader counts live
        self._streaming = streaming  # whether a host's stream to us is open
        self._call = call
        self._concurrency = concurrency
        self._clock = clock
        self._round: asyncio.Task | None = None
        self.rounds = 0  # rounds completed (tests, logs)
        self.last = (0, 0, 0)  # the last round's (called, moved, failed)

    def start(self) -> None:
        """Call every host over (a round already running is replaced)."""
        self.stop()
        self._round = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._round is not None and not self._round.done():
            self._round.cancel()
        self._round = None

    async def wait(self) -> None:
        """Until the current round ends (tests)."""
        if self._round is not None:
            await asyncio.gather(self._round, return_exceptions=True)

    async def _run(self) -> None:
        started = self._clock()
        queue = deque(h for h in self._hosts() if not self._streaming(h))
        counts = {"called": 0, "moved": 0, "failed": 0}

        async def worker() -> None:
            while queue:
                host = queue.popleft()
                if self._streaming(host):  # it came by itself meanwhile
                    continue
                counts["called"] += 1
                try:
                    if await self._call(host):
                        counts["moved"] += 1
                except XcpError as exc:  # unreachable, STALE_MASTER, ...: it comes later
                    counts["failed"] += 1
                    log.debug("FollowLeader to host %s: %s", host, exc.reason)
                except Exception:  # noqa: BLE001 - a bug: the other hosts still get called
                    counts["failed"] += 1
                    log.exception("FollowLeader to host %s failed", host)

        if queue:
            await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(queue)))))
        self.rounds += 1
        self.last = (counts["called"], counts["moved"], counts["failed"])
        if counts["called"]:
            log.info("called %d hosts over to this leader (%d moved, %d failed) in %.3fs",
                     counts["called"], counts["moved"], counts["failed"],
                     self._clock() - started)
