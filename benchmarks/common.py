"""Helpers shared by the benchmarks: the machine line, statistics, real xcp
processes (start, pin, stop, always clean up), /proc figures and a Watch-based
observer of host liveness.

The processes are the test harness's (tests/support/processes.py and daemons.py,
importable because the repository root is put on sys.path below): every process
started is registered and killed at interpreter exit even if a benchmark forgets
(or fails), so a run never leaves a master behind. Test hosts
(tests/support/netns.py) clean themselves up the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from tests.support import daemons, processes  # noqa: E402
from tests.support.processes import ProcessStartError, free_port  # noqa: E402,F401

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The master gets core 0, load generators and the benchmark's own clients core 1
# (2-core machine): the load generator's CPU must not be billed to the master.
MASTER_CPUS = {0}
LOAD_CPUS = {1}


# -- the machine ---------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def _mem_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def machine_line() -> str:
    """One line naming the machine and the software measured."""
    import google.protobuf

    return (f"{_cpu_model()}, {os.cpu_count()} cores, {_mem_gb():.0f} GB, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")


def loadavg() -> tuple[float, float, float]:
    a, b, c = Path("/proc/loadavg").read_text().split()[:3]
    return float(a), float(b), float(c)


def load_note() -> str:
    a, b, c = loadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f}"


def wait_quiet(limit: float = 1.0, timeout: float = 45.0, log: Callable = print) -> bool:
    """Wait (bounded) until the 1-minute load average is below `limit`: other
    people's test runs on this machine would distort the figures. True if it
    got quiet, False if we gave up (the caller reports the load with its figures)."""
    end = time.monotonic() + timeout
    while loadavg()[0] >= limit:
        if time.monotonic() > end:
            log(f"machine still busy ({load_note()}); measuring anyway")
            return False
        time.sleep(5)
    return True


def raise_nofile(want: int | None = None) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit (to the hard limit at most);
    the new soft limit. Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else min(max(soft, want), hard)
    if hard == resource.RLIM_INFINITY and want is None:
        target = 1 << 20
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- statistics ------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), nearest rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


@dataclass
class Summary:
    n: int
    median: float
    low: float
    high: float
    p90: float
    p99: float

    def fmt(self, unit: str = "ms", scale: float = 1000.0, digits: int = 1) -> str:
        """median (min-max, n) in `unit`."""
        if self.n == 0:
            return "no samples"
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.median * scale)} {unit} "
                f"({f.format(self.low * scale)}-{f.format(self.high * scale)}, n={self.n})")


def summarize(values: Iterable[float]) -> Summary:
    v = [x for x in values if x is not None]
    if not v:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan)
    return Summary(len(v), statistics.median(v), min(v), max(v),
                   percentile(v, 90), percentile(v, 99))


def table(rows: list[Sequence[object]], header: Sequence[str]) -> str:
    """A compact fixed-width table."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- /proc figures ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class CpuMeter:
    """CPU share of one core used by a process between start() and read()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._t0 = time.monotonic()
        self._c0 = cpu_seconds(pid)

    def read(self) -> float:
        """Fraction of one core since the last start (1.0 = one full core)."""
        return (cpu_seconds(self.pid) - self._c0) / max(1e-9, time.monotonic() - self._t0)


# -- processes --------------------------------------------------------------------
# The harness of the tests (tests/support): one way to start, wait for, signal and
# clean up a process, for the test suites and the benchmarks alike.

RUN_DIR = Path(tempfile.gettempdir()) / "xcp-bench"


def work_dir(prefix: str) -> Path:
    """A fresh directory under RUN_DIR for one benchmark run (RUN_DIR made if missing)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=RUN_DIR))


class Proc(processes.Proc):
    """A harness process (tests/support/processes.py) started at once, its stderr in a
    file under RUN_DIR."""

    def __init__(self, argv: Sequence[str], name: str, cpus: set[int] | None = None,
                 exec_prefix: Callable[[Sequence[str]], list[str]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(argv, name, log_dir=RUN_DIR, env=env, cpus=cpus,
                         exec_prefix=exec_prefix)
        self.spawn()


def _on_sigterm(signum, frame):  # make SIGTERM run the finally blocks and atexit hooks
    raise KeyboardInterrupt


def install_sigterm_handler() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


def finish(run: Callable[[], dict], summary: Callable[[dict], None],
           json_path: str | None) -> int:
    """A benchmark's exit status: `run()` gives its results, `summary` prints them and
    `json_path` (if any) gets them as JSON; 130 when interrupted (SIGTERM, Ctrl-C:
    the finally blocks and atexit hooks have stopped everything it started)."""
    try:
        results = run()
    except KeyboardInterrupt:
        return 130
    summary(results)
    if json_path:
        import json

        Path(json_path).write_text(json.dumps(results, indent=2, default=str))
    return 0


# Runs xcp-master with extra grpc server options (a proposed fix measured before
# it is made in transport.py): `python -c PATCHED_MASTER '<json options>' ARGS...`.
PATCHED_MASTER = """
import json, sys
from xcp_control.master import server as master
extra = [tuple(o) for o in json.loads(sys.argv.pop(1))]
original = master.master_server_options
master.master_server_options = lambda *a, **k: original(*a, **k) + extra
sys.argv[0] = "xcp-master"
sys.exit(master.main())
"""

# Runs the xcp-master of another checkout: `python -c TREE_MASTER DIR ARGS...`.
TREE_MASTER = """
import sys
sys.path.insert(0, sys.argv.pop(1))
from xcp_control.master.server import main
sys.argv[0] = "xcp-master"
sys.exit(main())
"""

def archived_tree(commit: str, into: Path) -> str:
    """That commit's xcp_control and xcp packages under `into` (git archive: no
    worktree, nothing changed in the repository), for TREE_MASTER."""
    import io
    import subprocess
    import tarfile

    repo = Path(__file__).resolve().parents[1]
    data = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit,
                           "xcp_control", "xcp"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return str(into)


# The proposed fix: no BDP probing on the master's server. grpc answers nearly every
# incoming heartbeat with a BDP-probe PING (and reads its ACK): half the master's
# per-beat CPU. Heartbeat streams carry a few dozen bytes: nothing to estimate.
NO_BDP = [("grpc.http2.bdp_probe", 0)]


class Master(daemons.MasterProcess):
    """`xcp-master` on `db`, started, pinned to MASTER_CPUS unless told otherwise.
    `server_options`: extra grpc server options (see PATCHED_MASTER)."""

    def __init__(self, db: Path | str, listen: str = "127.0.0.1:0",
                 heartbeat_interval: float = 1.0, dead_after: float = 3.0,
                 contact_timeout: float = 2.0, extra: Sequence[str] = (),
                 cpus: set[int] | None = MASTER_CPUS, log_level: str = "WARNING",
                 start_timeout: float = 30.0,
                 server_options: Sequence[tuple[str, object]] = (),
                 report_interval: float | None = None, tree: str = "") -> None:
        import json

        self.db = Path(db)
        launcher = ([sys.executable, "-c", PATCHED_MASTER, json.dumps(list(server_options))]
                    if server_options else [])
        if tree:  # the master of another checkout (an A/B against an older commit)
            launcher = [sys.executable, "-c", TREE_MASTER, tree]
        settings = ["--heartbeat-interval", str(heartbeat_interval), "--dead-after",
                    str(dead_after), "--contact-timeout", str(contact_timeout)]
        if report_interval is not None:  # else the master's default (10 s)
            settings += ["--report-interval", str(report_interval)]
        super().__init__(db, listen, extra_args=[*settings, "--log-level", log_level, *extra],
                         log_dir=RUN_DIR, cpus=cpus, launcher=launcher)
        self.start(start_timeout)
        self.listening_at = time.monotonic()


class Slave(daemons.SlaveProcess):
    """`xcp-slave`, started, on loopback or inside a test host's namespace (`host`)."""

    def __init__(self, master: str, state_dir: Path | str, listen: str | None = None,
                 name: str = "", extra: Sequence[str] = (), host=None,
                 cpus: set[int] | None = LOAD_CPUS, log_level: str = "WARNING",
                 start_timeout: float = 30.0) -> None:
        super().__init__(master, state_dir, name, log_dir=RUN_DIR,
                         extra_args=["--log-level", log_level, *extra], host=host,
                         listen=listen, cpus=cpus)
        self.start(start_timeout)


# -- clients ------------------------------------------------------------------------

CLIENT_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
                  ("grpc.use_local_subchannel_pool", 1)]


def aio_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CLIENT_OPTIONS)


@dataclass
class Flip:
    host: str
    live: bool
    at: float  # time.monotonic() when the event arrived here


@dataclass
class LivenessWatcher:
    """Follows HostMetrics.live through EventService.Watch, as a client sees it,
    and timestamps every flip of every host on arrival (monotonic clock, which
    is one clock for every process on this machine)."""

    address: str
    live: dict[str, bool] = field(default_factory=dict)
    flips: list[Flip] = field(default_factory=list)
    synced: bool = False

    def _open_channel(self) -> grpc.aio.Channel:
        """The channel the watch runs on (a subclass may make it TLS)."""
        return aio_channel(self.address)

    async def start(self) -> "LivenessWatcher":
        from xcp.v1 import event_service_pb2 as ev, event_service_pb2_grpc as ev_grpc

        self._ev = ev
        self._channel = self._open_channel()
        self._call = ev_grpc.EventServiceStub(self._channel).Watch(
            ev.WatchRequest(classes=["host_metrics"]))
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._follow())
        end = time.monotonic() + 30
        while not self.synced:
            if self._task.done():
                self._task.result()
                raise RuntimeError("watch ended before its snapshot")
            if time.monotonic() > end:
                raise TimeoutError("no Watch snapshot within 30 s")
            await asyncio.sleep(0.01)
        return self

    async def _follow(self) -> None:
        ev = self._ev
        async for event in self._call:
            now = time.monotonic()
            if event.op == ev.SYNC:
                self.synced = True
                continue
            if event.class_name != "host_metrics" or event.op == ev.DEL:
                continue
            m = event.host_metrics
            if self.live.get(m.host) != m.live:
                if m.host in self.live or self.synced:
                    self.flips.append(Flip(m.host, m.live, now))
                self.live[m.host] = m.live
                self._changed.set()

    async def wait(self, host: str, live: bool, timeout: float,
                   after: float | None = None) -> float | None:
        """Monotonic time of the first flip of `host` to `live` at or after
        `after` (default: now); None if none within `timeout`."""
        since = time.monotonic() if after is None else after
        end = time.monotonic() + timeout
        while True:
            hits = [f.at for f in self.flips
                    if f.at >= since and f.host == host and f.live == live]
            if hits:
                return min(hits)
            left = end - time.monotonic()
            if left <= 0:
                return None
            if self._task.done():
                self._task.result()
                raise RuntimeError("watch ended")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    def count(self, live: bool, since: float, hosts: set[str] | None = None) -> int:
        return sum(1 for f in self.flips if f.live == live and f.at >= since
                   and (hosts is None or f.host in hosts))

    async def close(self) -> None:
        self._call.cancel()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        await self._channel.close()


async def wait_live(address: str, host: str, live: bool = True, timeout: float = 15.0) -> float:
    """Poll GetHostMetrics until the host's live flag is `live`; monotonic time."""
    from xcp.v1 import host_service_pb2 as hs, host_service_pb2_grpc as hs_grpc

    async with aio_channel(address) as ch:
        stub = hs_grpc.HostServiceStub(ch)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(grpc.aio.AioRpcError):
                m = await stub.GetHostMetrics(hs.GetHostMetricsRequest(uuid=host), timeout=2)
                if m.live == live:
                    return time.monotonic()
            await asyncio.sleep(0.02)
    raise TimeoutError(f"host {host} not live={live} within {timeout}s")


def pin_self(cpus: set[int]) -> None:
    """Pin this process (the benchmark's own clients) to `cpus`. Threads made
    before this call keep their old mask, so call it first thing."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
