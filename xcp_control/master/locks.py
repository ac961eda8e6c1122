"""One operation at a time per object, as xapi's current_operations.

A second operation on a busy object fails at once with
OTHER_OPERATION_IN_PROGRESS rather than queueing behind the first: a caller
that waited would hold its own deadline hostage to another caller's call.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from xcp_control import errors


class OperationLocks:
    """The operation running on each busy object."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._running: dict[tuple[str, str], str] = {}
        self._ended: dict[tuple[str, str], float] = {}  # when each object's last one ended

    def current(self, class_name: str, uuid: str) -> str | None:
        return self._running.get((class_name, uuid))

    def ended_at(self, class_name: str, uuid: str) -> float | None:
        """When the object's last operation ended (the clock's reading), if any."""
        return self._ended.get((class_name, uuid))

    @contextmanager
    def hold(self, class_name: str, uuid: str, operation: str) -> Iterator[None]:
        key = (class_name, uuid)
        running = self._running.get(key)
        if running is not None:
            raise errors.other_operation_in_progress(class_name, uuid, running)
        self._running[key] = operation
        try:
            yield
        finally:
            del self._running[key]
            self._ended[key] = self._clock()
