"""Running a long-lived process (master or slave) the same way: its settings
from the command line, logging to stderr, one signal handling, start, wait,
stop. The service itself is a class with `start()` and `stop(reason)` that
tests drive in-process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Awaitable, Callable, Protocol, TypeVar

from xcp_control import settings as settings_module

log = logging.getLogger(__name__)
S = TypeVar("S")


class Service(Protocol):
    async def start(self) -> object: ...
    async def stop(self, reason: str = "shutdown") -> None: ...


def parse_settings(prog: str, description: str, cls: type[S], argv: list[str] | None) -> S:
    """The settings the command line asks for, validated; a bad flag or value
    is argparse's usage error (exit 2, one line, no traceback)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    settings_module.add_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        return settings_module.from_args(cls, args).validate()
    except settings_module.SettingsError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_on_signals() -> asyncio.Future:
    """A future resolved with the signal's name ("SIGTERM") on the first SIGTERM
    or SIGINT; later ones are ignored while we stop."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future = loop.create_future()

    def request(sig: signal.Signals) -> None:
        if not stop.done():
            log.info("received %s: stopping", sig.name)
            stop.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request, sig)
    return stop


async def serve_until_signalled(service: Service,
                                started: Callable[[], Awaitable[None] | None] = lambda: None
                                ) -> None:
    """Start the service, call `started` (prints the readiness line), wait for
    SIGTERM or SIGINT, stop the service with the signal's name as the reason."""
    stop = stop_on_signals()
    await service.start()
    try:
        started()
        reason = await stop
    finally:
        await service.stop(stop.result() if stop.done() else "shutdown")
    log.info("stopped (%s)", reason)
