"""TLS vs plaintext (issue 6): the liveness and forwarding figures with mutual TLS
on, side by side with plaintext, in one run on one machine.

    python benchmarks/bench_tls.py                 # everything (about 9 minutes)
    python benchmarks/bench_tls.py --quick         # a short smoke run (about 1 minute)
    python benchmarks/bench_tls.py --only crash,forwarding --trials 5

Sections (`--only`, comma-separated):
  crash       SIGKILL a real slave: time until live=false reaches this process, through
              a Watch stream and through GetHostMetrics polled every 5 ms. A plaintext
              and a TLS master run side by side; trials alternate between them.
  forwarding  a master + one real slave (--pause-time 0) with VMs running on it:
              forwarded PauseVM/UnpauseVM alternating, p50/p99 at concurrency 1
              (--calls calls) and calls/s at concurrency 32 (--seconds s, 32 VMs);
              direct SlaveService PauseDomain/UnpauseDomain to a slave for reference
              (with TLS the direct client presents the master's certificate).
              The client is a child process free to use both cores, as in
              bench_forwarding.py.
  ingest      N simulated hosts in ONE separate client process (pinned to core 1),
              each a real xcp_control.heartbeat.HeartbeatClient with its own host
              certificate, its own channel and connection, beating every 1 s; over a
              --window s window: master CPU (% of one core, /proc/<pid>/stat, per 5 s
              sub-window), master RSS, client CPU, and false deaths (live=false seen
              on a Watch, "missed its heartbeats" in the master's log) - must be 0.

With TLS every connection is mutual TLS with certificates of one pool CA made for
the run (pki.py): the master's, a pool-admin certificate for this benchmark's API
client, one per host. The master is pinned to core 0; slaves, the heartbeat
client process and this process to core 1. Every process started is stopped
(try/finally, atexit); loops are bounded in count and time; --budget bounds the
whole run (a watchdog ends it at budget + 120 s). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid as uuid_module
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import Master, Slave, free_port, summarize  # noqa: E402
from xcp.v1 import (  # noqa: E402
    host_service_pb2 as hs,
    host_service_pb2_grpc as hs_grpc,
    slave_service_pb2 as sl,
    slave_service_pb2_grpc as sl_grpc,
    vm_service_pb2 as vs,
    vm_service_pb2_grpc as vs_grpc,
)
from xcp_control.rpc import credentials  # noqa: E402
from xcp_control.security import pki  # noqa: E402

MODES = ("plain", "tls")
GIB = 1024**3
ADMIN = "bench-admin"
POLL_S = 0.005
DEADLINE = [float("inf")]  # monotonic time after which no new measurement starts


def log(*args: object) -> None:
    print(*args, flush=True)


def over_budget() -> bool:
    return time.monotonic() > DEADLINE[0]


def reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        first = (exc.details() or "").split(" ")[0].rstrip(":")
        return first if first.isupper() and "_" in first else exc.code().name
    return type(exc).__name__


# -- security: one pool CA for the run -------------------------------------------------


@dataclass
class Pki:
    """The run's TLS directory: CA, master, this benchmark's pool-admin identity."""

    tls: pki.TlsDir

    @classmethod
    def create(cls, path: Path) -> "Pki":
        t = pki.TlsDir(path)
        pki.create_ca(t)
        pki.issue(t, t.master(), "master", "master")
        pki.issue(t, t.client(ADMIN), ADMIN, "pool-admin")
        return cls(t)

    def host(self, state_dir: Path, host_uuid: str | None = None) -> str:
        """Give a slave's state dir its uuid, and issue the host's certificate."""
        state_dir.mkdir(parents=True, exist_ok=True)
        host_uuid = host_uuid or str(uuid_module.uuid4())
        (state_dir / "host-uuid").write_text(host_uuid + "\n")
        if not self.tls.host(host_uuid).cert.exists():
            pki.issue(self.tls, self.tls.host(host_uuid), host_uuid, "host")
        return host_uuid


def tls_flags(mode: str, p: Pki) -> list[str]:
    return ["--tls-dir", str(p.tls.path)] if mode == "tls" else []


def api_channel(address: str, mode: str, p: Pki) -> grpc.aio.Channel:
    """This benchmark's channel to a master: pool-admin certificate with TLS."""
    if mode == "plain":
        return common.aio_channel(address)
    creds = credentials.channel_credentials(p.tls, p.tls.client(ADMIN))
    return grpc.aio.secure_channel(address, creds, options=common.CLIENT_OPTIONS + credentials.to_master())


def slave_channel(address: str, host_uuid: str, mode: str, tlsdir: pki.TlsDir | None):
    """A channel straight to a slave: with TLS, as the master (the only caller a
    slave admits), verifying the host's name."""
    opts = list(common.CLIENT_OPTIONS)
    if mode == "plain" or tlsdir is None:
        return grpc.aio.insecure_channel(address, options=opts)
    creds = credentials.channel_credentials(tlsdir, tlsdir.master())
    return grpc.aio.secure_channel(address, creds,
                                   options=opts + credentials.expect_name(pki.host_dns_name(host_uuid)))


@dataclass
class Watcher(common.LivenessWatcher):
    """common.LivenessWatcher over a channel we make (TLS or not)."""

    mode: str = "plain"
    pki_: Pki | None = None

    def _open_channel(self) -> grpc.aio.Channel:
        return api_channel(self.address, self.mode, self.pki_)


class Api:
    def __init__(self, address: str, mode: str, p: Pki) -> None:
        self.channel = api_channel(address, mode, p)
        self.vms = vs_grpc.VMServiceStub(self.channel)
        self.hosts = hs_grpc.HostServiceStub(self.channel)

    async def live(self, host: str) -> bool | None:
        try:
            m = await self.hosts.GetHostMetrics(hs.GetHostMetricsRequest(uuid=host), timeout=2)
            return m.live
        except grpc.aio.AioRpcError:
            return None

    async def wait_live(self, host: str, live: bool = True, timeout: float = 20.0,
                        every: float = 0.02) -> float | None:
        """Monotonic time when GetHostMetrics first said `live`; None on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if await self.live(host) == live:
                return time.monotonic()
            await asyncio.sleep(every)
        return None

    async def running_vm(self, host: str, name: str) -> str:
        vm = await self.vms.CreateVM(vs.CreateVMRequest(name_label=name, memory=GIB, vcpus=1),
                                     timeout=10)
        await self.vms.StartVM(vs.StartVMRequest(uuid=vm.uuid, host=host), timeout=30)
        return vm.uuid

    async def close(self) -> None:
        await self.channel.close()


def unlink_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


# -- 1. crash: SIGKILL -> live=false ------------------------------------------------------


async def bench_crash(work: Path, p: Pki, trials: int) -> dict:
    masters: dict[str, Master] = {}
    apis: dict[str, Api] = {}
    watchers: dict[str, Watcher] = {}
    states = {m: work / f"crash-slave-{m}" for m in MODES}
    uuids = {m: p.host(states[m]) for m in MODES}
    watch_t: dict[str, list[float]] = {m: [] for m in MODES}
    poll_t: dict[str, list[float]] = {m: [] for m in MODES}
    slave = None
    try:
        for m in MODES:
            masters[m] = Master(work / f"crash-{m}.db", extra=tls_flags(m, p))
            apis[m] = Api(masters[m].address, m, p)
            watchers[m] = await Watcher(masters[m].address, mode=m, pki_=p).start()
        for trial in range(trials):
            order = MODES if trial % 2 == 0 else MODES[::-1]
            for m in order:
                if over_budget():
                    log("  budget spent: crash trials cut short")
                    break
                slave = Slave(masters[m].address, states[m], name=f"crash-{m}",
                              extra=tls_flags(m, p))
                if await apis[m].wait_live(uuids[m], True) is None:
                    raise RuntimeError(f"{m} slave never live\n{slave.stderr_text()[-2000:]}")
                await asyncio.sleep(0.5)
                poller = asyncio.ensure_future(
                    apis[m].wait_live(uuids[m], False, timeout=10, every=POLL_S))
                await asyncio.sleep(0.05)  # the poller is polling
                t0 = time.monotonic()
                slave.signal(signal.SIGKILL)
                seen = await watchers[m].wait(uuids[m], False, timeout=10, after=t0)
                polled = await poller
                slave.kill()
                slave = None
                w = (seen - t0) if seen else float("inf")
                q = (polled - t0) if polled else float("inf")
                watch_t[m].append(w)
                poll_t[m].append(q)
                log(f"  crash {m} trial {trial + 1}: live=false on Watch after {w * 1000:.1f} ms, "
                    f"by GetHostMetrics poll after {q * 1000:.1f} ms")
    finally:
        if slave:
            slave.kill()
        for w in watchers.values():
            with contextlib.suppress(Exception):
                await w.close()
        for a in apis.values():
            await a.close()
        for master in masters.values():
            master.stop()
    return {m: {"watch": summarize(watch_t[m]).__dict__, "poll": summarize(poll_t[m]).__dict__}
            for m in MODES} | {"load": common.load_note()}


# -- 2. forwarding ---------------------------------------------------------------------------


async def _client_worker(a: argparse.Namespace) -> None:
    """Child process: alternate pause/unpause on `targets` at `concurrency`, for
    `calls` calls (after `warm` uncounted ones) or for `seconds` (after 1 s of
    warm-up); prints one JSON line."""
    opts = [("grpc.use_local_subchannel_pool", 1)]
    if a.tls_dir:
        t = pki.TlsDir(a.tls_dir)
        creds = credentials.channel_credentials(t, t.identity(a.identity))
        channel = grpc.aio.secure_channel(a.target, creds,
                                          options=opts + credentials.expect_name(a.server_name))
    else:
        channel = grpc.aio.insecure_channel(a.target, options=opts)
    targets = a.targets.split(",")
    if a.path == "forwarded":
        stub = vs_grpc.VMServiceStub(channel)
        pause = lambda t: stub.PauseVM(vs.PauseVMRequest(uuid=t), timeout=10)  # noqa: E731
        unpause = lambda t: stub.UnpauseVM(vs.UnpauseVMRequest(uuid=t), timeout=10)  # noqa: E731
    else:
        stub = sl_grpc.SlaveServiceStub(channel)
        pause = lambda t: stub.PauseDomain(sl.PauseDomainRequest(vm_uuid=t), timeout=10)  # noqa: E731
        unpause = lambda t: stub.UnpauseDomain(sl.UnpauseDomainRequest(vm_uuid=t), timeout=10)  # noqa: E731
    latencies: list[float] = []
    errors: dict[str, int] = {}
    by_count = a.calls > 0
    warm_left = [a.warm if by_count else 0]
    hard_end = time.monotonic() + 120.0  # bound even a count-based run
    warm_end = time.monotonic() + (0.0 if by_count else 1.0)
    end = hard_end if by_count else warm_end + a.seconds
    attempts = [0]
    max_attempts = 10 * (a.calls + a.warm) if by_count else 10_000_000

    async def loop(target: str) -> None:
        paused = False
        while time.monotonic() < end and attempts[0] < max_attempts:
            if by_count and len(latencies) >= a.calls:
                return
            attempts[0] += 1
            t0 = time.monotonic()
            try:
                await (unpause(target) if paused else pause(target))
                paused = not paused
                if warm_left[0] > 0:
                    warm_left[0] -= 1
                elif t0 >= warm_end:
                    latencies.append(time.monotonic() - t0)
            except grpc.aio.AioRpcError as exc:
                if reason(exc) == "VM_BAD_POWER_STATE":  # left paused by an earlier run
                    paused = not paused
                    continue
                errors[reason(exc)] = errors.get(reason(exc), 0) + 1
                await asyncio.sleep(0.01)

    t_start = time.monotonic()
    await asyncio.gather(*(loop(targets[i % len(targets)]) for i in range(a.concurrency)))
    elapsed = a.seconds if not by_count else time.monotonic() - t_start
    await channel.close()
    s = summarize(latencies)
    print(json.dumps({"calls": len(latencies), "per_s": len(latencies) / max(elapsed, 1e-9),
                      "p50": s.median, "p99": s.p99, "low": s.low, "high": s.high,
                      "errors": errors}), flush=True)


def _run_client(path: str, target: str, targets: list[str], concurrency: int, *,
                calls: int = 0, warm: int = 0, seconds: float = 0.0,
                tls_dir: str = "", identity: str = "", server_name: str = "") -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--client-worker", "--path", path,
            "--target", target, "--targets", ",".join(targets), "--concurrency",
            str(concurrency), "--calls", str(calls), "--warm", str(warm),
            "--seconds", str(seconds)]
    if tls_dir:
        argv += ["--tls-dir", tls_dir, "--identity", identity, "--server-name", server_name]
    proc = common.Proc(argv, f"tls-client-{path}", cpus=set(range(os.cpu_count() or 1)))
    try:
        line = proc.wait_line("{", 150 + seconds)
    finally:
        proc.stop(5)
    return json.loads("{" + line)


@dataclass
class FwdRig:
    mode: str
    master: Master
    slave: Slave
    direct: Slave
    vms: list[str]
    domains: list[str]


async def _fwd_rig(work: Path, p: Pki, mode: str, concurrency: int) -> FwdRig:
    opts = ["--pause-time", "0", "--boot-time", "0", *tls_flags(mode, p)]
    master = Master(work / f"fwd-{mode}.db", extra=tls_flags(mode, p))
    slave = direct = None
    api = Api(master.address, mode, p)
    try:
        p.host(work / f"fwd-slave-{mode}")
        slave = Slave(master.address, work / f"fwd-slave-{mode}", name=f"fwd-{mode}", extra=opts)
        # The direct slave's master is nobody (a closed loopback port): a master would
        # reconcile away domains it does not know.
        duuid = p.host(work / f"fwd-direct-{mode}")
        direct = Slave(f"127.0.0.1:{free_port()}", work / f"fwd-direct-{mode}",
                       name=f"direct-{mode}", extra=opts)
        if await api.wait_live(slave.uuid, True) is None:
            raise RuntimeError(f"{mode}: forwarding slave never live")
        vms = [await api.running_vm(slave.uuid, f"fwd-{mode}-{i}") for i in range(concurrency)]
        ch = slave_channel(direct.address, duuid, mode, p.tls)
        dstub = sl_grpc.SlaveServiceStub(ch)
        domains = [f"direct-{i}" for i in range(concurrency)]
        try:
            for d in domains:
                await dstub.StartDomain(sl.StartDomainRequest(vm_uuid=d, memory=GIB, vcpus=1),
                                        timeout=10)
        finally:
            await ch.close()
        return FwdRig(mode, master, slave, direct, vms, domains)
    except BaseException:
        for proc in (slave, direct):
            if proc:
                proc.stop()
        master.stop()
        raise
    finally:
        await api.close()


async def bench_forwarding(work: Path, p: Pki, calls: int, seconds: float, concurrency: int,
                           reps: int) -> dict:
    rigs: dict[str, FwdRig] = {}
    runs: dict[str, list[dict]] = {}
    try:
        for m in MODES:
            rigs[m] = await _fwd_rig(work, p, m, concurrency)
        await asyncio.sleep(1.0)
        plan = [(1, r) for r in range(reps)] + [(concurrency, r) for r in range(reps)]
        for c, rep in plan:
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for m in order:
                rig = rigs[m]
                for path in ("direct", "forwarded"):
                    if over_budget():
                        log("  budget spent: forwarding runs cut short")
                        break
                    await asyncio.sleep(0.5)
                    if path == "forwarded":
                        target, names = rig.master.address, rig.vms[:c]
                        ident, server = f"client-{ADMIN}", pki.MASTER_NAME
                    else:
                        target, names = rig.direct.address, rig.domains[:c]
                        ident, server = "master", pki.host_dns_name(rig.direct.uuid)
                    cpu_m = common.CpuMeter(rig.master.pid)
                    cpu_s = common.CpuMeter((rig.slave if path == "forwarded" else rig.direct).pid)
                    kw = dict(calls=calls, warm=200) if c == 1 else dict(seconds=seconds)
                    if m == "tls":
                        kw |= dict(tls_dir=str(p.tls.path), identity=ident, server_name=server)
                    t0 = time.monotonic()
                    r = await asyncio.to_thread(_run_client, path, target, names, c, **kw)
                    wall = time.monotonic() - t0
                    # CPU per call over the client's whole life (warm-up included): scale.
                    total_calls = (r["calls"] + 200) if c == 1 else r["per_s"] * (seconds + 1)
                    if path == "forwarded":
                        r["master_us_per_call"] = round(cpu_m.read() * wall / max(1, total_calls) * 1e6)
                    r["slave_us_per_call"] = round(cpu_s.read() * wall / max(1, total_calls) * 1e6)
                    r["load"] = common.load_note()
                    runs.setdefault(f"{path}_c{c}_{m}", []).append(r)
                    log(f"  {m:5} {path:9} c={c:<2}: {r['per_s']:7.0f} calls/s, "
                        f"p50 {r['p50'] * 1000:.3f} ms, p99 {r['p99'] * 1000:.3f} ms, "
                        f"n={r['calls']}, master {r.get('master_us_per_call', '-')} us/call, "
                        f"slave {r['slave_us_per_call']} us/call, errors {r['errors']}; {r['load']}")
    finally:
        for rig in rigs.values():
            rig.slave.stop()
            rig.direct.stop()
            rig.master.stop()
    return {"runs": runs, "concurrency": concurrency, "calls": calls, "seconds": seconds,
            "load": common.load_note()}


# -- 3. heartbeat ingest ------------------------------------------------------------------------


async def _hb_worker(a: argparse.Namespace) -> None:
    """Child process: `hosts` real HeartbeatClients, one channel and certificate
    each, opened at `rate` per second; one JSON status line a second; stops on
    SIGTERM or after `duration` s (Goodbye on every stream, bounded)."""
    import logging

    from xcp_control.slave.heartbeat import HeartbeatClient, HostIdentity
    from xcp_control.slave.hypervisor import SimulatedHypervisor

    logging.basicConfig(level=logging.ERROR)
    beats = [0]

    class CountingHypervisor(SimulatedHypervisor):
        """Counts beats: the client reads memory_free once per message it sends."""

        @property
        def memory_free(self) -> int:
            beats[0] += 1
            return super().memory_free

    uuids = Path(a.uuids).read_text().split()[:int(a.hosts)]
    tdir = pki.TlsDir(a.tls_dir) if a.tls_dir else None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    end = time.monotonic() + a.seconds
    clients: list[HeartbeatClient] = []
    tasks: list[asyncio.Task] = []

    def status(final: bool = False) -> None:
        print(json.dumps({"started": len(clients), "up": sum(c.connected for c in clients),
                          "sessions": sum(c.sessions for c in clients), "beats": beats[0],
                          "t": time.monotonic(), "final": final}), flush=True)

    async def report() -> None:
        while True:
            status()
            await asyncio.sleep(1.0)

    reporter = asyncio.ensure_future(report())
    t0 = time.monotonic()
    for i, u in enumerate(uuids):
        if stop.is_set() or time.monotonic() > end:
            break
        creds = credentials.channel_credentials(tdir, tdir.host(u)) if tdir else None
        client = HeartbeatClient(a.target, HostIdentity(u, f"sim-{i}", "127.0.0.1:9"),
                                 CountingHypervisor(u, 256 * GIB), credentials=creds)
        clients.append(client)
        tasks.append(asyncio.ensure_future(client.run()))
        delay = t0 + (i + 1) / a.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, end - time.monotonic()))
    reporter.cancel()
    status(final=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.stop(timeout=2.0) for c in clients),
                                              return_exceptions=True), 10.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class HbWorker(common.Proc):
    def __init__(self, master: str, hosts: int, uuids: Path, tls_dir: str, rate: float,
                 duration: float) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--hb-worker", "--target", master,
                "--hosts", str(hosts), "--uuids", str(uuids), "--rate", str(rate),
                "--seconds", str(duration)]
        if tls_dir:
            argv += ["--tls-dir", tls_dir]
        super().__init__(argv, "tls-hb-worker", cpus=common.LOAD_CPUS)
        self.last: dict = {}
        self._seen = 0

    def poll(self) -> dict:
        """The latest status line (non-blocking)."""
        while self._seen < len(self.stdout):
            line = self.stdout[self._seen]
            self._seen += 1
            with contextlib.suppress(ValueError):
                if line.startswith("{"):
                    self.last = json.loads(line)
        return self.last


async def bench_ingest_one(work: Path, p: Pki, mode: str, hosts: int, uuids: Path,
                           window: float, rate: float) -> dict:
    db = work / f"ingest-{mode}-{hosts}.db"
    unlink_db(db)
    master = Master(db, extra=tls_flags(mode, p))
    worker = None
    watcher = None
    try:
        await asyncio.sleep(1.0)
        idle_rss = common.rss_bytes(master.pid)
        open_limit = 60.0 + hosts / rate
        worker = HbWorker(master.address, hosts, uuids, str(p.tls.path) if mode == "tls" else "",
                          rate, duration=open_limit + window + 60)
        t_start = time.monotonic()
        open_cpu0 = common.cpu_seconds(master.pid)
        while True:
            st = worker.poll()
            if st.get("up", 0) >= hosts:
                break
            if not worker.running or time.monotonic() - t_start > open_limit:
                raise RuntimeError(f"ingest {mode} {hosts}: only {st.get('up')} of {hosts} up "
                                   f"after {time.monotonic() - t_start:.0f} s\n"
                                   f"{worker.stderr_text()[-2000:]}")
            await asyncio.sleep(0.2)
        t_open = time.monotonic() - t_start
        open_cpu = common.cpu_seconds(master.pid) - open_cpu0
        watcher = await Watcher(master.address, mode=mode, pki_=p).start()
        host_set = set(Path(uuids).read_text().split()[:hosts])
        not_live_at_start = sum(1 for u in host_set if not watcher.live.get(u))
        await asyncio.sleep(3.0)  # settle: registrations written, flips published
        missed0 = master.stderr_text().count("missed its heartbeats")
        t0 = time.monotonic()
        st0 = dict(worker.poll())
        sub: list[float] = []
        rss_max = 0
        client_cpu = common.CpuMeter(worker.pid)
        whole = common.CpuMeter(master.pid)
        n_sub = max(1, round(window / 5.0))
        for _ in range(n_sub):
            meter = common.CpuMeter(master.pid)
            end = time.monotonic() + window / n_sub
            while time.monotonic() < end:
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                rss_max = max(rss_max, common.rss_bytes(master.pid))
            sub.append(meter.read())
        master_cpu = whole.read()
        worker_cpu = client_cpu.read()
        elapsed = time.monotonic() - t0
        st1 = dict(worker.poll())
        false_deaths = watcher.count(False, since=t_start, hosts=host_set)
        missed = master.stderr_text().count("missed its heartbeats")
    finally:
        if watcher:
            with contextlib.suppress(Exception):
                await watcher.close()
        if worker:
            worker.stop(15)
        master.stop()
        unlink_db(db)
    beats = (st1.get("beats", 0) - st0.get("beats", 0)) / elapsed
    s = summarize(sub)
    r = {"mode": mode, "hosts": hosts, "open_s": round(t_open, 1),
         "beats_per_s": round(beats), "master_cpu": s.__dict__,
         "master_open_us_per_host": round(open_cpu / hosts * 1e6),
         "master_cpu_pct": round(master_cpu * 100, 1),
         "master_us_per_beat": round(master_cpu / max(beats, 1) * 1e6, 1),
         "client_cpu_pct": round(worker_cpu * 100, 1),
         "master_rss_mb": round(rss_max / 2**20, 1), "idle_rss_mb": round(idle_rss / 2**20, 1),
         "rss_kb_per_host": round((rss_max - idle_rss) / hosts / 1024, 1),
         "reconnects": st1.get("sessions", 0) - st0.get("sessions", 0),
         "up_at_end": st1.get("up", 0), "not_live_at_start": not_live_at_start,
         "false_deaths": false_deaths, "missed_log_lines": missed, "missed_in_window":
         missed - missed0, "window_s": round(elapsed, 1), "load": common.load_note()}
    log(f"  ingest {mode:5} {hosts:5} hosts: master {r['master_cpu_pct']}% cpu "
        f"(5 s windows {s.fmt('%', 100)}), {r['master_us_per_beat']} us/beat, "
        f"RSS {r['master_rss_mb']} MB ({r['rss_kb_per_host']} KB/host), client "
        f"{r['client_cpu_pct']}%, {r['beats_per_s']} beats/s, opened in {r['open_s']} s "
        f"(master {r['master_open_us_per_host']} us CPU per host), "
        f"{false_deaths} false deaths, {missed} missed, {r['reconnects']} reconnects; {r['load']}")
    return r


async def bench_ingest(work: Path, p: Pki, counts: list[int], window: float,
                       rate: float) -> dict:
    n = max(counts)
    uuids = [str(uuid_module.uuid4()) for _ in range(n)]
    t0 = time.monotonic()
    for u in uuids:
        pki.issue(p.tls, p.tls.host(u), u, "host")
    issue_s = time.monotonic() - t0
    log(f"  issued {n} host certificates in {issue_s:.1f} s")
    path = work / "ingest-uuids.txt"
    path.write_text("\n".join(uuids) + "\n")
    out = []
    for i, hosts in enumerate(counts):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for m in order:
            if over_budget():
                log("  budget spent: ingest runs cut short")
                break
            await asyncio.sleep(2.0)  # the previous run's processes are gone
            try:
                out.append(await bench_ingest_one(work, p, m, hosts, path, window, rate))
            except RuntimeError as exc:
                log(f"  ingest {m} {hosts}: FAILED: {exc}")
                out.append({"mode": m, "hosts": hosts, "failed": str(exc)[:500],
                            "load": common.load_note()})
    return {"runs": out, "issue_s": round(issue_s, 2), "issued": n}


# -- summary ---------------------------------------------------------------------------------


def _ms(s: dict, digits: int = 1) -> str:
    if not s or s.get("n", 0) == 0:
        return "-"
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'] * 1000)} ms ({f.format(s['low'] * 1000)}-"
            f"{f.format(s['high'] * 1000)}, n={s['n']})")


def _agg(runs: list[dict], key: str, scale: float = 1.0, digits: int = 0, unit: str = "") -> str:
    vals = [r[key] * scale for r in runs if key in r]
    if not vals:
        return "-"
    s = summarize(vals)
    f = f"{{:,.{digits}f}}"
    if len(vals) == 1:
        return f"{f.format(s.median)}{unit}"
    return f"{f.format(s.median)}{unit} ({f.format(s.low)}-{f.format(s.high)}, n={s.n})"


def summary_rows(results: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    c = results.get("crash")
    if c and "plain" in c:
        rows.append(["SIGKILL -> live=false, Watch", _ms(c["plain"]["watch"]),
                     _ms(c["tls"]["watch"])])
        rows.append(["SIGKILL -> live=false, GetHostMetrics every 5 ms",
                     _ms(c["plain"]["poll"]), _ms(c["tls"]["poll"])])
    f = results.get("forwarding")
    if f and f.get("runs"):
        runs, cc = f["runs"], f["concurrency"]
        for path in ("forwarded", "direct"):
            label = ("forwarded PauseVM/UnpauseVM" if path == "forwarded"
                     else "direct PauseDomain/UnpauseDomain")
            r1 = {m: runs.get(f"{path}_c1_{m}", []) for m in MODES}
            rows.append([f"{label}, c=1, p50", *(_agg(r1[m], "p50", 1000, 3, " ms") for m in MODES)])
            rows.append([f"{label}, c=1, p99", *(_agg(r1[m], "p99", 1000, 3, " ms") for m in MODES)])
            rn = {m: runs.get(f"{path}_c{cc}_{m}", []) for m in MODES}
            rows.append([f"{label}, c={cc}, calls/s", *(_agg(rn[m], "per_s", 1, 0) for m in MODES)])
            rows.append([f"{label}, c={cc}, p50", *(_agg(rn[m], "p50", 1000, 2, " ms") for m in MODES)])
            for c, rc in ((1, r1), (cc, rn)):
                if path == "forwarded":
                    rows.append([f"master CPU per forwarded call, c={c}",
                                 *(_agg(rc[m], "master_us_per_call", 1, 0, " us") for m in MODES)])
                rows.append([f"slave CPU per call ({path}), c={c}",
                             *(_agg(rc[m], "slave_us_per_call", 1, 0, " us") for m in MODES)])
    g = results.get("ingest")
    if g and g.get("runs"):
        by = {(r["mode"], r["hosts"]): r for r in g["runs"]}
        for hosts in sorted({r["hosts"] for r in g["runs"]}):
            def cell(m: str, fn) -> str:
                r = by.get((m, hosts))
                if r is None:
                    return "-"
                return "FAILED" if r.get("failed") else fn(r)
            rows.append([f"ingest {hosts} hosts: master CPU, 5 s windows",
                         *(cell(m, lambda r: cpu_fmt(r["master_cpu"])) for m in MODES)])
            rows.append([f"ingest {hosts} hosts: master CPU per beat",
                         *(cell(m, lambda r: f"{r['master_us_per_beat']} us") for m in MODES)])
            rows.append([f"ingest {hosts} hosts: master RSS (KB/host)",
                         *(cell(m, lambda r: f"{r['master_rss_mb']:.0f} MB "
                                f"({r['rss_kb_per_host']:.0f})") for m in MODES)])
            rows.append([f"ingest {hosts} hosts: master CPU per connection opened",
                         *(cell(m, lambda r: f"{r['master_open_us_per_host']} us") for m in MODES)])
            rows.append([f"ingest {hosts} hosts: client process CPU",
                         *(cell(m, lambda r: f"{r['client_cpu_pct']}%") for m in MODES)])
            rows.append([f"ingest {hosts} hosts: beats/s, false deaths, reconnects",
                         *(cell(m, lambda r: f"{r['beats_per_s']}, {r['false_deaths']}"
                                f"+{r['missed_log_lines']}, {r['reconnects']}") for m in MODES)])
    return rows


def cpu_fmt(s: dict) -> str:
    return (f"{s['median'] * 100:.1f}% ({s['low'] * 100:.1f}-{s['high'] * 100:.1f}, "
            f"n={s['n']})")


def print_summary(results: dict) -> None:
    rows = summary_rows(results)
    if rows:
        print(common.table(rows, ["measure", "plaintext", "TLS"]))


# -- main -------------------------------------------------------------------------------------


def other_benchmarks() -> list[str]:
    """Command lines of other benchmark processes on this machine (not ours)."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            text = " ".join(x.decode(errors="replace") for x in argv[:3])
            if "python" in text and ("benchmarks/bench_" in text or "loadgen.py" in text):
                found.append(f"{entry.name}: {text[:120]}")
    return found


def wait_for_others(limit: float) -> None:
    """Wait (bounded, polling every 30 s) while another benchmark runs here."""
    end = time.monotonic() + limit
    while (others := other_benchmarks()) and time.monotonic() < end:
        log(f"# waiting for another benchmark to finish: {others[0]}")
        time.sleep(min(30.0, max(0.0, end - time.monotonic())))
    if others:
        log(f"# another benchmark still running after {limit:.0f} s; measuring anyway: {others}")


async def main_async(a: argparse.Namespace) -> dict:
    work = common.work_dir("bench-tls-")
    sections = a.only.split(",")
    results: dict = {"machine": common.machine_line(), "start_load": common.load_note(),
                     "argv": sys.argv[1:]}
    log(f"# {results['machine']}; {results['start_load']}")
    log("# master pinned to core 0; slaves, the heartbeat client process and this "
        "process to core 1; forwarding clients free")
    try:
        p = Pki.create(work / "tls")
        if "crash" in sections:
            log("crash (SIGKILL -> live=false):")
            results["crash"] = await bench_crash(work, p, a.trials)
        if "forwarding" in sections and not over_budget():
            log("forwarding:")
            results["forwarding"] = await bench_forwarding(work, p, a.calls, a.seconds,
                                                           a.concurrency, a.reps)
        if "ingest" in sections and not over_budget():
            log("heartbeat ingest:")
            counts = [int(x) for x in a.hosts.split(",")]
            results["ingest"] = await bench_ingest(work, p, counts, a.window, a.open_rate)
    finally:
        results["end_load"] = common.load_note()
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="crash,forwarding,ingest")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--trials", type=int, default=10, help="crash trials per mode")
    p.add_argument("--calls", type=int, default=2000, help="forwarding c=1: calls per run")
    p.add_argument("--seconds", type=float, default=5.0, help="forwarding c=32: seconds per run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="forwarding runs per figure and mode")
    p.add_argument("--hosts", default="500,1000,2000", help="ingest: comma-separated host counts")
    p.add_argument("--window", type=float, default=30.0, help="ingest: seconds measured")
    p.add_argument("--open-rate", type=float, default=250.0,
                   help="ingest: heartbeat clients started per second")
    p.add_argument("--budget", type=float, default=660.0,
                   help="seconds after which no new measurement starts (a watchdog "
                        "ends the run at budget + 120 s)")
    p.add_argument("--wait-others", type=float, default=120.0,
                   help="seconds to wait at most, before starting, while another "
                        "benchmark runs on this machine")
    p.add_argument("--json", help="also write the results here")
    # worker modes (child processes of this script)
    p.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hb-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--targets", help=argparse.SUPPRESS)
    p.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tls-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--identity", default="", help=argparse.SUPPRESS)
    p.add_argument("--server-name", default="", help=argparse.SUPPRESS)
    p.add_argument("--uuids", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=250.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.client_worker:
        asyncio.run(_client_worker(a))
        return 0
    if a.hb_worker:
        common.raise_nofile()
        asyncio.run(_hb_worker(a))
        return 0
    if a.quick:
        a.trials, a.calls, a.seconds, a.reps = min(a.trials, 3), min(a.calls, 300), 2.0, 1
        a.hosts, a.window, a.wait_others = "200", 10.0, min(a.wait_others, 30.0)
    counts = [int(x) for x in a.hosts.split(",")]
    if (not 1 <= a.trials <= 50 or not 1 <= a.calls <= 100_000 or not 0 < a.seconds <= 60
            or not 1 <= a.concurrency <= 256 or not 1 <= a.reps <= 10
            or not all(1 <= n <= 5000 for n in counts) or not 1 <= a.window <= 300
            or not 0 < a.budget <= 3000 or not 0 <= a.wait_others <= 1800):
        p.error("trials 1..50, calls 1..100000, seconds (0, 60], concurrency 1..256, "
                "reps 1..10, hosts 1..5000 each, window 1..300, budget (0, 3000]")
    common.install_sigterm_handler()
    common.raise_nofile()
    common.pin_self(common.LOAD_CPUS)
    wait_for_others(a.wait_others)
    DEADLINE[0] = time.monotonic() + a.budget
    watchdog = threading.Timer(a.budget + 120.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    watchdog.daemon = True
    watchdog.start()
    def run() -> dict:
        try:
            return asyncio.run(main_async(a))
        finally:
            watchdog.cancel()

    def summary(results: dict) -> None:
        print_summary(results)
        log(f"# {results['machine']}; start {results['start_load']}, end {results['end_load']}")

    return common.finish(run, summary, a.json)


if __name__ == "__main__":
    sys.exit(main())
