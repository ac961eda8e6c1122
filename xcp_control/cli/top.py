"""`xcp top`: a live view of the pool, as xentop or kubectl top.

The view is kept from one Watch stream (hosts, their metrics, VMs; a flip is
a HostMetrics change of `live`), and once per refresh from ListHosts for the
age of each host's last report and its memory (the store is told those at
most every 30 s; ListHosts has them from memory). With the master's metrics
endpoint (--metrics or $XCP_METRICS), it also shows the rate of forwarded
calls and of their failures by reason, the event-loop lag and the heartbeat
streams open. On a terminal it refreshes until Ctrl-C (or --iterations);
piped, it prints one snapshot, once the Watch snapshot is complete, and exits.

`PoolView` and `CallRates` are plain logic on `now` readings, for tests.
"""

from __future__ import annotations

import argparse
import queue
import signal
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field

import grpc
from prometheus_client.parser import text_string_to_metric_families

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp_control.cli import render
from xcp_control.cli.client import MASTER_UNREACHABLE, CliError, Connection

FLIPS_SHOWN = 8
TOP_CLASSES = ["host", "host_metrics", "vm"]
SCRAPE_TIMEOUT = 2.0  # seconds: a metrics endpoint that does not answer is shown as such
HOST_COLUMNS = ["NAME", "UUID", "LIVE", "LAST REPORT", "MEM FREE", "MEM TOTAL", "VMS"]
FORWARDED = "xcp_forwarded_call_seconds"  # the histogram; its _count is the calls


@dataclass(frozen=True)
class Flip:
    at: float  # wall-clock time the change reached us
    host: str  # host uuid
    live: bool


@dataclass
class PoolView:
    """The pool as Watch events (and ListHosts refreshes) describe it."""

    hosts: dict[str, dm.Host] = field(default_factory=dict)
    metrics: dict[str, dm.HostMetrics] = field(default_factory=dict)  # by metrics uuid
    vms: dict[str, dm.VM] = field(default_factory=dict)
    flips: deque = field(default_factory=lambda: deque(maxlen=FLIPS_SHOWN))
    synced: bool = False  # the snapshot is complete: later changes are news

    def apply(self, event: ev.Event, now: float) -> None:
        if event.op == ev.SYNC:
            self.synced = True
            return
        kind = event.WhichOneof("object")
        table = {"host": self.hosts, "host_metrics": self.metrics, "vm": self.vms}.get(kind)
        if table is None:
            return
        if event.op == ev.DEL:
            table.pop(event.uuid, None)
            return
        if kind == "host_metrics":
            old = self.metrics.get(event.uuid)
            if old is not None and old.live != event.host_metrics.live:
                self.flips.appendleft(Flip(now, event.host_metrics.host,
                                           event.host_metrics.live))
        table[event.uuid] = getattr(event, kind)

    def refresh(self, listing: hs.ListHostsResponse) -> None:
        """Take the last report's time and memory from ListHosts. Not `live`:
        a flip is the Watch stream's to tell, once."""
        for fresh in listing.host_metrics:
            held = self.metrics.get(fresh.uuid)
            if held is not None:
                updated = dm.HostMetrics()
                updated.CopyFrom(held)
                updated.last_updated.CopyFrom(fresh.last_updated)
                updated.memory_free, updated.memory_total = fresh.memory_free, fresh.memory_total
                self.metrics[fresh.uuid] = updated

    def name(self, host: str) -> str:
        record = self.hosts.get(host)
        return record.name_label if record is not None else host[:8]

    def host_table(self, now: float) -> render.Table:
        running: dict[str, int] = {}
        for vm in self.vms.values():
            if vm.resident_on and vm.power_state != dm.HALTED:
                running[vm.resident_on] = running.get(vm.resident_on, 0) + 1
        rows = []
        for host in sorted(self.hosts.values(), key=lambda h: (h.name_label, h.uuid)):
            m = self.metrics.get(host.metrics, dm.HostMetrics(host=host.uuid))
            rows.append([host.name_label, host.uuid[:8], render.yes_no(m.live),
                         render.last_beat(m, now), render.human_bytes(m.memory_free),
                         render.human_bytes(m.memory_total), str(running.get(host.uuid, 0))])
        return HOST_COLUMNS, rows

    def summary(self) -> str:
        live = sum(1 for m in self.metrics.values() if m.live)
        running = sum(1 for vm in self.vms.values() if vm.power_state == dm.RUNNING)
        return (f"{len(self.hosts)} hosts, {live} live; {len(self.vms)} VMs, "
                f"{running} running")

    def flip_lines(self) -> list[str]:
        return [f"{time.strftime('%H:%M:%S', time.localtime(f.at))}  {self.name(f.host)}  "
                f"{'live' if f.live else 'NOT LIVE'}" for f in self.flips]


# -- the master's metrics ---------------------------------------------------------------


def metrics_url(text: str) -> str:
    """A URL from HOST:PORT or a URL."""
    if not text or "://" in text:
        return text
    return f"http://{text}/metrics"


@dataclass(frozen=True)
class Scrape:
    calls: dict[tuple[str, str], float]  # (method, reason) -> forwarded calls so far
    down: dict[str, float]  # cause -> flips to not live so far (xcp_host_flips_total)
    gauges: dict[str, float]  # unlabelled samples: xcp_event_loop_lag_seconds, ...


def parse_scrape(text: str) -> Scrape:
    calls: dict[tuple[str, str], float] = {}
    down: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == FORWARDED + "_count":
                calls[(sample.labels["method"], sample.labels["reason"])] = sample.value
            elif sample.name == "xcp_host_flips_total" and sample.labels["to"] == "not_live":
                down[sample.labels["cause"]] = sample.value
            elif not sample.labels:
                gauges[sample.name] = sample.value
    return Scrape(calls, down, gauges)


def scrape(url: str) -> Scrape:
    """One scrape of the master's /metrics; OSError or ValueError on failure."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        return parse_scrape(response.read().decode("utf-8", "replace"))


class CallRates:
    """Forwarded calls per second between two scrapes, by outcome."""

    def __init__(self) -> None:
        self._last: tuple[float, Scrape] | None = None

    def lines(self, got: Scrape, now: float) -> list[str]:
        """Totals, and rates since the previous scrape when there is one."""
        previous, self._last = self._last, (now, got)
        totals: dict[str, float] = {}
        for (_, reason), count in got.calls.items():
            totals[reason] = totals.get(reason, 0.0) + count
        rates: dict[str, float] = {}
        if previous is not None and now > previous[0]:
            before: dict[str, float] = {}
            for (_, reason), count in previous[1].calls.items():
                before[reason] = before.get(reason, 0.0) + count
            for reason, count in totals.items():
                # A counter that went down is a restarted master: count from zero.
                grown = count - before.get(reason, 0.0)
                rates[reason] = (count if grown < 0 else grown) / (now - previous[0])
        return _call_lines(totals, rates if previous is not None else None)


def _call_lines(totals: dict[str, float], rates: dict[str, float] | None) -> list[str]:
    def part(reason: str) -> str:
        shown = f"{totals[reason]:.0f}"
        return shown if rates is None else f"{shown} ({rates.get(reason, 0.0):.1f}/s)"
    ok = totals.get("OK", 0.0)
    errors = sorted(r for r in totals if r != "OK")
    failed = sum(totals[r] for r in errors)
    lines = [f"forwarded calls: {ok + failed:.0f}, OK {part('OK') if 'OK' in totals else '0'}"]
    if errors:
        lines.append("  errors: " + ", ".join(f"{r} {part(r)}" for r in errors))
    return lines


def gauge_line(got: Scrape) -> str:
    """Flips to not live by cause, loop lag, heartbeat streams: one line."""
    down = ", ".join(f"{cause} {n:.0f}" for cause, n in sorted(got.down.items()) if n)
    lag = got.gauges.get("xcp_event_loop_lag_seconds")
    streams = got.gauges.get("xcp_heartbeat_streams")
    parts = [f"down since start: {down}"] if down else []
    if lag is not None:
        parts.append(f"event-loop lag {lag * 1000:.0f} ms")
    if streams is not None:
        parts.append(f"{streams:.0f} heartbeat streams")
    return "; ".join(parts)


# -- the command --------------------------------------------------------------------------


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.05..3600 seconds: {text!r}")
    return value


def _iterations(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return int(text)


def add_args(p) -> None:
    """`xcp top`'s own options; --metrics defaults to $XCP_METRICS (parse_args)."""
    p.add_argument("--metrics", default=None, metavar="URL",
                   help="the master's metrics endpoint (http://HOST:PORT/metrics or "
                        "HOST:PORT) for forwarded-call rates (default: $XCP_METRICS, else none)")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="S",
                   help="seconds between two refreshes on a terminal (default 1)")
    p.add_argument("--iterations", type=_iterations, default=0, metavar="N",
                   help="stop after N refreshes (default: until Ctrl-C); piped: always one")


class _Events:
    """The Watch stream, read by a thread into a queue, so that the screen
    refreshes on time whether or not events come."""

    def __init__(self, conn: Connection) -> None:
        self.call = conn.events.Watch(ev.WatchRequest(classes=TOP_CLASSES),
                                      metadata=conn.metadata)
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name="xcp-top-watch").start()

    def _pump(self) -> None:
        try:
            for event in self.call:
                self.queue.put(event)
        except grpc.RpcError as exc:
            self.queue.put(exc)
        self.queue.put(None)

    def take(self, view: PoolView, until: float) -> bool:
        """Apply events until `until` (monotonic); False once the stream ended."""
        while True:
            left = until - time.monotonic()
            try:
                item = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            if isinstance(item, grpc.RpcError):
                raise item
            view.apply(item, time.time())


@dataclass
class Screen:
    """What one refresh shows, as text blocks (plain when piped, rich on a terminal)."""

    title: str
    hosts: render.Table
    flips: list[str]
    calls: list[str]

    def plain(self) -> str:
        parts = [self.title, "", render.plain_table(*self.hosts)]
        if self.flips:
            parts += ["", "recent flips:", *("  " + f for f in self.flips)]
        if self.calls:
            parts += ["", *self.calls]
        return "\n".join(parts)

    def rich(self):
        from rich.console import Group
        from rich.text import Text
        blocks = [Text(self.title, style="bold"), render.rich_table(self.hosts)]
        if self.flips:
            blocks += [Text("recent flips", style="bold"), *(Text("  " + f) for f in self.flips)]
        blocks += [Text(line) for line in self.calls]
        return Group(*blocks)


def _screen(c, view: PoolView, rates: CallRates, url: str) -> Screen:
    now = time.time()
    view.refresh(c.conn.call(c.conn.hosts.ListHosts, hs.ListHostsRequest()))
    title = (f"xcp top - master {c.conn.address} - {view.summary()} - "
             f"{time.strftime('%H:%M:%S', time.localtime(now))}")
    calls: list[str] = []
    if url:
        try:
            got = scrape(url)
        except (OSError, ValueError) as exc:
            calls = [f"metrics {url}: {exc}"]
        else:
            calls = rates.lines(got, time.monotonic())
            if gauges := gauge_line(got):
                calls.append(gauges)
    return Screen(title, view.host_table(now), view.flip_lines(), calls)


def cmd_top(c) -> None:
    view, rates = PoolView(), CallRates()
    url = metrics_url(c.args.metrics)
    events = _Events(c.conn)
    stopped: list[int] = []

    def stop(signum, frame) -> None:
        stopped.append(signum)
        events.call.cancel()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if not c.out.terminal:
            _snapshot(c, view, rates, url, events, stopped)
        else:
            _live(c, view, rates, url, events, stopped)
    except grpc.RpcError as exc:
        if not stopped:
            raise c.conn.error(exc, c.args.timeout) from None
    finally:
        events.call.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _snapshot(c, view, rates, url, events, stopped) -> None:
    """Piped: wait for the Watch snapshot (bounded by --timeout), print, done."""
    deadline = time.monotonic() + c.args.timeout
    while not view.synced and not stopped:
        if time.monotonic() >= deadline:
            raise CliError(MASTER_UNREACHABLE, f"error: no snapshot from {c.conn.address} within "
                              f"{c.args.timeout:g}s")
        if not events.take(view, min(deadline, time.monotonic() + 0.1)):
            break
    if not stopped:
        c.out.write(_screen(c, view, rates, url).plain())


def _live(c, view, rates, url, events, stopped) -> None:
    """On a terminal: redraw every --interval, until Ctrl-C or --iterations."""
    from rich.console import Console
    from rich.live import Live

    console = Console(file=c.out.stream)
    shown = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while not stopped:
            if not events.take(view, time.monotonic() + (c.args.interval if shown else 0.2)):
                break
            if not view.synced:
                continue
            live.update(_screen(c, view, rates, url).rich(), refresh=True)
            shown += 1
            if c.args.iterations and shown >= c.args.iterations:
                break
