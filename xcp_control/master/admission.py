"""Load shedding: the master refuses new heartbeat streams while its event loop lags.

A saturated master answers Hellos late; slaves whose Hello goes unanswered
reconnect, and every retry costs the master a new TCP + HTTP/2 connection: at
8,000-10,000 hosts on one core that was a reconnect storm that never ended,
with live hosts reaped because their beats queued behind it (BENCHMARKS.md).
While the loop lags, a new stream is refused at once with TOO_BUSY, before any
work is done for it: the streams already open keep being served, so no live
host is reaped for the master's own slowness, and the refused slaves back off
further (heartbeat.Reconnect).

`LoopLag` is pure logic on readings of a monotonic clock, so tests drive it
without sleeping; `watch_loop_lag` is the probe that feeds it: it sleeps one
tick and reports how late it woke.
"""

from __future__ import annotations

import asyncio
from typing import Callable


class LoopLag:
    """The event loop's lag, smoothed over a few probes."""

    def __init__(self, limit: float, smoothing: float = 0.3) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.limit = limit  # seconds of smoothed lag above which we are busy; 0 = never
        self._smoothing = smoothing  # weight of the newest probe: one late wake-up is no trend
        self.lag = 0.0

    def observe(self, expected: float, now: float) -> None:
        """A probe due at `expected` ran at `now`. One reading counts for at most
        twice the limit: a single stall (the process was stopped, a long GC) is
        not load, only lateness probe after probe is."""
        late = min(max(0.0, now - expected), 2 * self.limit)
        self.lag += self._smoothing * (late - self.lag)

    @property
    def busy(self) -> bool:
        return self.limit > 0 and self.lag > self.limit


async def watch_loop_lag(lag: LoopLag, clock: Callable[[], float], tick: float) -> None:
    """Probe the loop every `tick` seconds, for ever."""
    while True:
        expected = clock() + tick
        await asyncio.sleep(tick)
        lag.observe(expected, clock())
