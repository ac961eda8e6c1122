"""When a slave tries the master again: backoff and the reconnect policy.

A master that cannot be reached (restarting, partitioned) is retried within
about one reconnect_cap, so its restart is absorbed in a second. A master that
is up but turns us away (it sheds new streams while overloaded, leaves the
Hello unanswered, or refuses us for who we are: a wrong or borrowed
certificate) is given room, growing up to BUSY_BACKOFF_CAP, so that thousands
of slaves do not keep a saturated master saturated with reconnects, and a
misconfigured one does not knock three times a second for ever.
"""

from __future__ import annotations

import random

import grpc

DEFAULT_INTERVAL = 1.0  # seconds: the reconnect cap until configured otherwise
BACKOFF_BASE = 0.1  # seconds: the first reconnect waits up to this long
# Seconds: the longest wait after a master turned us away. Long on purpose: every
# refused attempt costs a saturated master a connection (~4 ms of its core), so
# thousands of waiting slaves must come back slowly for it to ever catch up; 30 s
# kept 8,000 hosts from converging, 300 s let them in (BENCHMARKS.md). The
# ceiling doubles from reconnect_cap, so a brief overload costs only seconds.
BUSY_BACKOFF_CAP = 300.0
HELLO_TIMEOUT_INTERVALS = 5  # a slow master is not a dead one: room for its Hello reply

# Answers meaning "the master is up and said no": shed (TOO_BUSY), or refused
# for who we are. Retrying those at once cannot help.
_TURNED_AWAY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.PERMISSION_DENIED,
                                grpc.StatusCode.UNAUTHENTICATED})


class Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n)).

    Jitter spreads a whole pool's reconnects after a master restart; the cap
    (about one interval) bounds how long a slave stays away once the master
    is back."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = DEFAULT_INTERVAL,
                 rng: random.Random | None = None) -> None:
        if not (base > 0 and cap > 0):
            raise ValueError(f"base and cap must be > 0, got {base}, {cap}")
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def ceiling(self) -> float:
        """The most the next delay can be."""
        return min(self.cap, self.base * 2.0 ** self._attempt)

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling)
        if self.ceiling < self.cap:
            self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0


class TurnedAway(Exception):
    """The master is up but did not take the stream: it left the Hello unanswered."""


def turned_away(exc: BaseException) -> bool:
    """Whether a failed attempt means "the master is up and said no", not
    "unreachable": the Hello went unanswered, the master shed the stream
    (TOO_BUSY, RESOURCE_EXHAUSTED), or it refused us for who we are
    (PERMISSION_DENIED, UNAUTHENTICATED)."""
    if isinstance(exc, TurnedAway):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _TURNED_AWAY_CODES


class Reconnect:
    """How long to wait before the next attempt to open a heartbeat stream.

    After a failure to reach the master, full jitter up to `cap` (about one
    interval). After the master turned us away, full jitter from `cap` growing
    to `busy_cap`: a saturated master then sheds load instead of gaining it.
    A welcome (the Hello answered) resets both."""

    def __init__(self, cap: float = DEFAULT_INTERVAL, busy_cap: float = BUSY_BACKOFF_CAP,
                 rng: random.Random | None = None) -> None:
        self._unreachable = Backoff(BACKOFF_BASE, cap, rng)
        self._busy = Backoff(cap, max(cap, busy_cap), rng)

    def after_failure(self, busy: bool) -> float:
        """The delay before the next attempt."""
        return (self._busy if busy else self._unreachable).next_delay()

    def welcomed(self) -> None:
        self._unreachable.reset()
        self._busy.reset()


def hello_timeout(interval: float) -> float:
    """How long to wait for the master's reply to a Hello."""
    return max(HELLO_TIMEOUT_INTERVALS * interval, 2.0)
