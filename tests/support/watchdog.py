"""Stand-ins for the host watchdog (xcp_control/slave/watchdog.py): never a
real watchdog device (tests/conftest.py makes the slave refuse character
devices), and a model of what the kernel would do with what a slave writes.

`KernelWatchdog` is Linux's watchdog core (drivers/watchdog/watchdog_dev.c) on
a clock: open starts it, a write or WDIOC_SETTIMEOUT pets it, a close after
"V" stops it, any other close (the slave's own, or the kernel's when the slave
dies) pets it once more and leaves it running; `fired` is when the host would
have reset. `FifoWatchdog` is a FIFO a slave process is given as its
`--watchdog-device`: a reader thread timestamps every byte and every open and
close of the writer, and replays them into a KernelWatchdog.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from xcp_control.slave.watchdog import MAGIC_CLOSE, PET


@dataclass
class KernelWatchdog:
    """When a host with this watchdog would reset, from its operations."""

    timeout: float = 60.0  # softdog's default soft_margin until WDIOC_SETTIMEOUT
    running: bool = False
    expiry: float | None = None
    fired: list[float] = field(default_factory=list)  # resets it would have made
    closest: float = float("inf")  # least time left on the timer when it was petted
    _magic: bool = False

    def _now(self, now: float) -> None:
        if self.running and self.expiry is not None and now > self.expiry:
            self.fired.append(self.expiry)
            self.running, self.expiry = False, None  # the host reset

    def open(self, now: float) -> None:
        self._now(now)
        if not self.running:
            self.running, self.expiry = True, now + self.timeout
        self._magic = False

    def set_timeout(self, now: float, timeout: float) -> None:
        self._now(now)
        self.timeout = timeout
        self.pet(now)

    def write(self, now: float, data: bytes) -> None:
        self._now(now)
        if data:
            self._magic = data.endswith(MAGIC_CLOSE)
            self.pet(now)

    def pet(self, now: float) -> None:
        if self.running:
            self.closest = min(self.closest, self.expiry - now)
            self.expiry = now + self.timeout

    def close(self, now: float) -> None:
        self._now(now)
        if self._magic:
            self.running, self.expiry = False, None
        else:
            self.pet(now)  # "watchdog did not stop!": one more ping, still running
        self._magic = False

    def fired_by(self, now: float) -> list[float]:
        self._now(now)
        return list(self.fired)


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic()
    kind: str  # "open", "data" or "close"
    data: bytes = b""


class FifoWatchdog:
    """A FIFO whose writer (a slave) is watched; use as a context manager."""

    POLL = 0.002  # s between two reads

    def __init__(self, path: Path, limit: float = 180.0) -> None:
        self.path = Path(path)
        os.mkfifo(self.path)
        # Held open by us, so the slave's open (non-blocking) never fails.
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.events: list[Event] = []
        self._stop = threading.Event()
        self._limit = limit
        self._thread = threading.Thread(target=self._run, name="fifo-watchdog", daemon=True)

    def __enter__(self) -> "FifoWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        writer = False
        deadline = time.monotonic() + self._limit  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:  # a writer holds it, nothing written
                if not writer:
                    writer = True
                    self.events.append(Event(time.monotonic(), "open"))
                time.sleep(self.POLL)
                continue
            now = time.monotonic()
            if data:
                if not writer:
                    writer = True
                    self.events.append(Event(now, "open"))
                self.events.append(Event(now, "data", data))
            else:  # no writer
                if writer:
                    writer = False
                    self.events.append(Event(now, "close"))
                time.sleep(self.POLL)

    # -- what it saw -------------------------------------------------------------

    def pets(self, since: float = 0.0) -> list[float]:
        return [e.at for e in self.events if e.kind == "data" and e.at >= since
                for _ in range(e.data.count(PET))]

    def magic_closes(self, since: float = 0.0) -> int:
        return sum(e.data.count(MAGIC_CLOSE) for e in self.events
                   if e.kind == "data" and e.at >= since)

    def closes(self, since: float = 0.0) -> list[float]:
        return [e.at for e in self.events if e.kind == "close" and e.at >= since]

    def opens(self, since: float = 0.0) -> list[float]:
        return [e.at for e in self.events if e.kind == "open" and e.at >= since]

    def kernel(self, timeout: float, until: float | None = None) -> KernelWatchdog:
        """The events replayed into a kernel watchdog of this timeout."""
        model = KernelWatchdog(timeout=timeout)
        for event in list(self.events):
            if event.kind == "open":
                model.open(event.at)
            elif event.kind == "data":
                model.write(event.at, event.data)
            else:
                model.close(event.at)
        model.fired_by(time.monotonic() if until is None else until)
        return model
