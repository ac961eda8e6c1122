"""One operation at a time per object, as xapi's current_operations.

A second operation on a busy object fails at once with
OTHER_OPERATION_IN_PROGRESS rather than queueing behind the first: a caller
that waited would hold its own deadline hostage to another caller's call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from xcp_control import errors


class OperationLocks:
    """The operation running on each busy object."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], str] = {}

    def current(self, class_name: str, uuid: str) -> str | None:
        return self._running.get((class_name, uuid))

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
