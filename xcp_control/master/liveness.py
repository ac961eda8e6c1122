"""Host liveness: who is live (the role of xapi's Db_gc).

`Liveness` is pure logic: every method takes `now`, a reading of a monotonic
clock, so tests drive every edge with a fake clock and no sleeping. It keeps
last-report times in memory only; the store learns of a host's liveness when
it flips (see host_metrics.py), never once per report.

Silence itself is caught below Python: the master's gRPC core PINGs every
heartbeat connection and closes one whose PING goes unanswered, so a frozen or
partitioned host's stream ends dead_after after its last packet
(rpc/options.master_server_options), and a stream's end is `detach`. The
reaper here is the backstop for what PINGs cannot see: a slave whose C-core
answers them while its Python is stuck.

Rules:
- a host is live from its Hello on;
- a heartbeat stream that ends (goodbye, crash, reset connection, a PING
  unanswered) makes its host not live at once, unless a newer stream of the
  same host is open;
- a host with no report for longer than `report_deadline` is not live
  (exactly report_deadline is still live);
- after the master starts, hosts keep their stored state for `grace` seconds;
  one that has not said Hello by then is not live; so a master restart marks
  no live host dead, and a host that died meanwhile is not live once the
  grace is over.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, Iterable

FlipListener = Callable[[str, bool], None]

# Why a host flipped: the `cause` label of xcp_host_flips_total.
BEAT = "beat"  # to live: a Hello or beat from a host that was not live
STREAM_ENDED = "stream_ended"  # its heartbeat stream ended (crash, reset) without a goodbye
GOODBYE = "goodbye"  # the slave stopped cleanly and said so
REAPER = "reaper"  # no report for report_deadline, or not back after the startup grace
DECLARED_DEAD = "declared_dead"  # an operator's DeclareDead


class Liveness:
    """Last-seen times and live flags of the pool's hosts."""

    def __init__(self, report_deadline: float, grace: float, started_at: float) -> None:
        self._report_deadline = report_deadline
        self._grace = grace
        self._grace_end = started_at + grace
        # Live hosts only, oldest report first: a report moves its host to the
        # end, so the reaper looks only at hosts that may have expired.
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._restored: set[str] = set()  # live from the store, no Hello since
        self._streams: dict[str, int] = {}
        self._next_stream = 0
        self._listeners: list[FlipListener] = []
        # Flips so far by (live, cause): one increment per flip, never per beat;
        # the metrics collector reads it at scrape time.
        self.flips: Counter[tuple[bool, str]] = Counter()

    def add_listener(self, listener: FlipListener) -> None:
        """Call listener(host, live) whenever a host's live flag flips."""
        self._listeners.append(listener)

    def restore(self, hosts: Iterable[tuple[str, bool]], now: float) -> None:
        """The master starts serving at `now` with these stored live flags: they
        hold until the grace has passed from `now`, then the reaper judges."""
        self._grace_end = now + self._grace
        for host, live in hosts:
            if live:
                self._last_seen[host] = now
                self._restored.add(host)

    def is_live(self, host: str) -> bool:
        return host in self._last_seen

    def acknowledged(self, host: str) -> bool:
        """Live because it said Hello to this master, not only restored as
        live for the startup grace."""
        return host in self._last_seen and host not in self._restored

    @property
    def acknowledged_count(self) -> int:
        return len(self._last_seen) - len(self._restored)  # restored ones are in both

    def last_seen(self, host: str) -> float | None:
        return self._last_seen.get(host)

    @property
    def live_count(self) -> int:
        return len(self._last_seen)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def beat(self, host: str, now: float) -> None:
        """A report (or a Hello) from `host` arrived at `now`."""
        self._restored.discard(host)
        was_live = host in self._last_seen
        self._last_seen[host] = now
        self._last_seen.move_to_end(host)
        if not was_live:
            self._flip(host, True, BEAT)

    def reap(self, now: float) -> list[str]:
        """Mark not live the hosts restored at start that never came back, and
        those with no report for longer than report_deadline; return them."""
        if now < self._grace_end:
            return []
        dead = sorted(self._restored)
        for host in dead:  # never came back after a restart: the reaper's verdict
            self._mark_down(host, REAPER)
        while self._last_seen:
            host, seen = next(iter(self._last_seen.items()))
            if now - seen <= self._report_deadline:
                break
            dead.append(host)
            self._mark_down(host, REAPER)
        return dead

    def mark_down(self, host: str, cause: str = DECLARED_DEAD) -> bool:
        """The host is known to be down (DeclareDead). True if it flipped."""
        return self._mark_down(host, cause)

    def forget(self, host: str) -> None:
        self._restored.discard(host)
        self._last_seen.pop(host, None)
        self._streams.pop(host, None)

    # -- heartbeat streams ---------------------------------------------------

    def attach(self, host: str) -> int:
        """A new heartbeat stream for `host`; it supersedes any older one."""
        self._next_stream += 1
        self._streams[host] = self._next_stream
        return self._next_stream

    def is_current(self, host: str, stream: int) -> bool:
        return self._streams.get(host) == stream

    def detach(self, host: str, stream: int, cause: str = STREAM_ENDED) -> bool:
        """A stream ended without a newer one (cause: STREAM_ENDED or GOODBYE):
        the host is down at once. True if it flipped; a superseded stream's end
        changes nothing."""
        if not self.is_current(host, stream):
            return False
        del self._streams[host]
        return self._mark_down(host, cause)

    def _mark_down(self, host: str, cause: str) -> bool:
        self._restored.discard(host)
        if self._last_seen.pop(host, None) is None:
            return False
        self._flip(host, False, cause)
        return True

    def _flip(self, host: str, live: bool, cause: str) -> None:
        self.flips[(live, cause)] += 1
        for listener in self._listeners:
            listener(host, live)
