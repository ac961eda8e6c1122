"""One libvirt connection for the slave: blocking calls off the event loop,
events onto it, and re-opened when it drops.

libvirt's API blocks (an RPC to libvirtd per call), so every call runs in a
small thread pool. libvirt delivers domain events and notices a dead daemon
(keepalive, close callback) only while its own event loop runs: that loop
(`virEventRunDefaultImpl`) runs in one daemon thread per process, and each
callback is handed to asyncio with `call_soon_threadsafe`.

While the connection is down, calls fail at once with HYPERVISOR_UNAVAILABLE
and a task re-opens it with backoff; `on_up` then lets the backend resync.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import libvirt

from xcp_control import errors

log = logging.getLogger(__name__)

T = TypeVar("T")
EventHandler = Callable[[str, int, int], None]  # (domain uuid, event, detail), on the loop

_KEEPALIVE_INTERVAL = 2  # seconds between keepalive probes to libvirtd
_KEEPALIVE_COUNT = 3  # unanswered probes before the connection counts as dead
_REOPEN_FIRST = 0.2  # seconds before the first re-open attempt
_REOPEN_CAP = 5.0  # longest wait between two re-open attempts

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ignore_libvirt_errors(_opaque: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours become XcpErrors."""


def start_event_thread() -> None:
    """Register libvirt's default event loop and run it in a daemon thread
    (once per process; it must precede the first open)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class LibvirtConnection:
    """The slave's connection to `uri`; `call(fn, ...)` runs `fn(conn, ...)`
    in a worker thread."""

    def __init__(self, uri: str, host_uuid: str, on_event: EventHandler,
                 on_up: Callable[[], None], on_down: Callable[[], None],
                 workers: int = 4) -> None:
        self.uri = uri
        self._host_uuid = host_uuid
        self._on_event = on_event
        self._on_up = on_up
        self._on_down = on_down
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="libvirt-call")
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reopening: asyncio.Task | None = None
        self._closed = False
        self.last_error = "not opened yet"

    @property
    def up(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        """First open: returns once connected or after the first failure, in
        which case a background task keeps trying."""
        self._loop = asyncio.get_running_loop()
        start_event_thread()
        if not await self._try_open():
            self._reopen_later()

    async def close(self) -> None:
        self._closed = True
        if self._reopening is not None:
            self._reopening.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(self._teardown, conn)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` off the loop. A libvirtError that leaves the
        connection dead becomes HYPERVISOR_UNAVAILABLE (and a re-open);
        others propagate for the caller to translate."""
        conn = self._conn
        if conn is None:
            raise errors.hypervisor_unavailable(self._host_uuid, self.last_error)
        try:
            return await self._run(fn, conn, *args)
        except libvirt.libvirtError as exc:
            if await self._run(_alive, conn):
                raise
            self._lost(conn, f"libvirt connection lost: {exc.get_error_message()}")
            raise errors.hypervisor_unavailable(self._host_uuid, self.last_error) from None

    # -- internals -----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _try_open(self) -> bool:
        try:
            conn = await self._run(self._connect)
        except libvirt.libvirtError as exc:
            self.last_error = f"cannot open {self.uri}: {exc.get_error_message()}"
            return False
        self._conn = conn
        log.info("libvirt connection to %s open", self.uri)
        self._on_up()
        return True

    def _connect(self) -> libvirt.virConnect:
        """In a worker: open, then subscribe to lifecycle events and to the
        connection's end (drivers without keepalive or close callbacks, like
        the test driver, simply go without)."""
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(_KEEPALIVE_INTERVAL, _KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            pass
        try:
            conn.registerCloseCallback(self._closed_by_libvirt, None)
        except libvirt.libvirtError:
            pass
        self._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_event, None)
        return conn

    def _teardown(self, conn: libvirt.virConnect) -> None:
        for undo in (lambda: conn.domainEventDeregisterAny(self._callback_id),
                     conn.unregisterCloseCallback, conn.close):
            try:
                undo()
            except libvirt.libvirtError:
                pass

    def _lifecycle_event(self, _conn, dom, event: int, detail: int, _opaque) -> None:
        """In libvirt's event thread: hand the event to the loop."""
        uuid = dom.UUIDString()  # local: no RPC
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_event, uuid, event, detail)

    def _closed_by_libvirt(self, conn, reason: int, _opaque) -> None:
        """In libvirt's event thread: the daemon went away or stopped answering."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(
                self._lost, conn, f"libvirt connection closed (reason {reason})")

    def _lost(self, conn: libvirt.virConnect, why: str) -> None:
        if self._conn is not conn or self._closed:
            return  # already noticed, or we are stopping
        log.warning("%s; re-opening %s", why, self.uri)
        self.last_error = why
        self._conn = None
        self._executor.submit(self._teardown, conn)
        self._on_down()
        self._reopen_later()

    def _reopen_later(self) -> None:
        if self._closed or (self._reopening is not None and not self._reopening.done()):
            return
        self._reopening = asyncio.ensure_future(self._reopen())

    async def _reopen(self) -> None:
        delay = _REOPEN_FIRST
        while not self._closed:
            await asyncio.sleep(delay)
            if await self._try_open():
                return
            log.debug("%s; retrying in %.1fs", self.last_error, delay)
            delay = min(delay * 2, _REOPEN_CAP)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
