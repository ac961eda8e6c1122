"""The /metrics endpoint, and collectors that read on the event loop.

prometheus_client's HTTP server runs in a thread of its own and collects on
the thread of each request. The values our collectors read (live hosts, open
streams, queue depths) belong to the asyncio loop: reading its dicts from
another thread could race with their changes. `OnLoop` therefore runs each
read on the loop (one short callback per scrape) and hands the metric
families back to the HTTP thread, which formats them off the loop.
Histograms are prometheus_client's own, thread-safe objects.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Awaitable, Callable, Iterable, Union

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from xcp_control.rpc.server import PortInUse
from xcp_control.settings import parse_endpoint

log = logging.getLogger(__name__)

# The `_created` series double every counter and histogram and no dashboard
# here uses them.
disable_created_metrics()

Families = Iterable[Metric]
Read = Callable[[], Union[Families, Awaitable[Families]]]

SCRAPE_READ_TIMEOUT = 5.0  # longest a scrape waits for a busy loop before answering without


class Sources:
    """Functions returning metric families (sync or async), read in order."""

    def __init__(self) -> None:
        self._reads: list[Read] = []

    def add(self, read: Read) -> None:
        self._reads.append(read)

    async def read(self) -> list[Metric]:
        families: list[Metric] = []
        for read in self._reads:
            got = read()
            families.extend(await got if inspect.isawaitable(got) else got)
        return families


class OnLoop(Collector):
    """Collects by running `read` (sync or async, returning metric families)
    on `loop`. A loop too busy to answer within `timeout` gives a scrape
    without these families (Prometheus then sees them missing), never a hang."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read: Read,
                 timeout: float = SCRAPE_READ_TIMEOUT) -> None:
        self._loop = loop
        self._read = read
        self._timeout = timeout

    async def _run(self) -> list[Metric]:
        families = self._read()
        if inspect.isawaitable(families):
            families = await families
        return list(families)

    def collect(self) -> Families:
        reading = self._run()
        try:
            future = asyncio.run_coroutine_threadsafe(reading, self._loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            reading.close()
            return []
        try:
            return future.result(self._timeout)
        except TimeoutError:
            future.cancel()
            log.warning("metrics: the event loop did not answer within %.1fs", self._timeout)
        except Exception:  # noqa: BLE001 - a broken read must not break the scrape
            log.exception("metrics: reading failed")
        return []


class MetricsEndpoint:
    """Serves `registry` as Prometheus text at http://HOST:PORT/metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.address = ""  # HOST:PORT as bound
        self._server = None
        self._thread = None

    def start(self, listen: str) -> str:
        """Bind `listen` (port 0 picks a free one) and serve; the bound HOST:PORT."""
        host, port = parse_endpoint(listen, "--metrics-listen")
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise PortInUse(f"cannot listen on {listen} (--metrics-listen): {exc}") from exc
        bound = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{bound}"
        return self.address

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics" if self.address else ""

    async def stop(self) -> None:
        """Stop serving (shutdown waits for the server's poll: off the loop)."""
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        server.server_close()
