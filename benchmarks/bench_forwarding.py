"""Forwarding benchmarks (issue 4): how long a forwarded call can wait for a bad
host, and what forwarding costs.

    python benchmarks/bench_forwarding.py                    # everything
    python benchmarks/bench_forwarding.py --only overhead --seconds 10
    python benchmarks/bench_forwarding.py --only faults --trials 5

Sections (`--only`, comma-separated):
  faults     a slave in a test host (netns) is SIGSTOPped, or its host partitioned
             (nftables drops every packet): the first forwarded call after the fault,
             and a call already in flight when it strikes (a 30 s clean shutdown),
             must fail CANNOT_CONTACT_HOST within contact_timeout + 0.5 s. The master
             has dead_after 60 s, so forwarding, not liveness, must catch it.
  xapi       side by side in the same fault window: the same calls through a
             forwarder set up as xapi's is (a cached grpc.aio channel straight to
             the slave's SlaveService, no deadline, no keepalive), waited for at
             most 60 s each ("> 60 s" when still hanging).
  offline    once the host is known down: HOST_OFFLINE end-to-end latency (p50/p99
             over sequential calls from one client).
  inflight   calls in flight when the host is declared not live fail within 100 ms:
             (a) SIGKILL the slave (its heartbeat stream ends), (b) SIGSTOP it and
             DeclareDead.
  overhead   PauseVM/UnpauseVM through the master vs PauseDomain/UnpauseDomain
             straight to a slave (--pause-time 0), concurrency 1 (p50) and 32
             (calls/s).

Times on CLOCK_MONOTONIC in this process; the master runs on core 0, slaves on
core 1; the overhead client runs in a child process free to use both cores.
Everything started is stopped on the way out (try/finally, atexit).
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
import time
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

CONTACT = 2.0
LONG_DEAD_AFTER = 60.0
XAPI_WAIT = 60.0
GIB = 1024**3


def log(*args: object) -> None:
    print(*args, flush=True)


def reason(exc: BaseException) -> str:
    """The catalogued reason of an error (its message starts with it), else the code."""
    if isinstance(exc, grpc.aio.AioRpcError):
        first = (exc.details() or "").split(" ")[0].rstrip(":")
        return first if first.isupper() and "_" in first else exc.code().name
    return type(exc).__name__


class Api:
    """The master's API over one aio channel."""

    def __init__(self, address: str) -> None:
        self.channel = common.aio_channel(address)
        self.vms = vs_grpc.VMServiceStub(self.channel)
        self.hosts = hs_grpc.HostServiceStub(self.channel)

    async def running_vm(self, host: str, name: str) -> str:
        vm = await self.vms.CreateVM(vs.CreateVMRequest(name_label=name, memory=GIB, vcpus=1),
                                     timeout=10)
        await self.vms.StartVM(vs.StartVMRequest(uuid=vm.uuid, host=host), timeout=30)
        return vm.uuid

    async def close(self) -> None:
        await self.channel.close()


async def timed(coro, t0_holder: list[float] | None = None) -> tuple[float, str]:
    """(monotonic end time, outcome: "ok" or the error reason) of a call."""
    try:
        await coro
        outcome = "ok"
    except Exception as exc:  # noqa: BLE001
        outcome = reason(exc)
    return time.monotonic(), outcome


# -- faults: ours, and xapi's way side by side -------------------------------------------


class FaultRig:
    """A master on the root side, one slave inside a test host; freeze / thaw it."""

    def __init__(self, work: Path) -> None:
        from tests.support.netns import TestHost

        self.host = TestHost().create()
        self.master = self.slave = None
        try:
            self.master = Master(work / "faults.db", listen=f"{self.host.root_ip}:0",
                                 dead_after=LONG_DEAD_AFTER, contact_timeout=CONTACT)
            self.slave = Slave(self.master.address, work / "faults-slave",
                               listen=f"{self.host.host_ip}:0", name="faulty", host=self.host,
                               extra=["--clean-shutdown-time", "30", "--boot-time", "0",
                                      "--pause-time", "0"])
        except BaseException:
            self.close()
            raise

    def freeze(self, kind: str) -> None:
        if kind == "SIGSTOP":
            self.slave.signal(signal.SIGSTOP)
        else:
            self.host.partition()

    def thaw(self, kind: str) -> None:
        if kind == "SIGSTOP":
            self.slave.signal(signal.SIGCONT)
        else:
            self.host.heal()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.host.heal()
        if self.slave:
            self.slave.stop()
        if self.master:
            self.master.stop()
        self.host.destroy()


async def _healthy(api: Api, host: str, timeout: float = 30.0) -> None:
    """Wait until a forwarded call to the host works again (channel reconnected)."""
    end = time.monotonic() + timeout
    while True:
        try:
            await api.hosts.EnableHost(hs.EnableHostRequest(uuid=host), timeout=5)
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


async def bench_faults(work: Path, trials: int, xapi: bool, do_trials: bool) -> dict:
    from tests.support.netns import can_make_test_hosts

    ok, why = can_make_test_hosts()
    if not ok:
        return {"skipped": why}
    rig = FaultRig(work)
    api = Api(rig.master.address)
    out: dict = {"contact_timeout_s": CONTACT, "target_s": CONTACT + 0.5}
    try:
        host = rig.slave.uuid
        await common.wait_live(rig.master.address, host, True, timeout=20)
        for kind in ("SIGSTOP", "partition"):
            if do_trials:
                first, inflight = [], []
                outcomes: dict[str, int] = {}
                for trial in range(trials):
                    f, i, o = await _fault_trial(rig, api, host, kind, trial)
                    first.append(f)
                    inflight.append(i)
                    for k in o:
                        outcomes[k] = outcomes.get(k, 0) + 1
                    log(f"  {kind} trial {trial + 1}: first call failed after {f:.3f} s, "
                        f"in-flight call {i:.3f} s after the fault ({', '.join(o)})")
                fs, fi = summarize(first), summarize(inflight)
                out[kind] = {"first_call": fs.__dict__, "in_flight": fi.__dict__,
                             "outcomes": outcomes,
                             "met": fs.high <= CONTACT + 0.5 and fi.high <= CONTACT + 0.5,
                             "load": common.load_note()}
            if xapi:
                out[f"{kind}_side_by_side"] = await _side_by_side(rig, api, host, kind)
    finally:
        await api.close()
        rig.close()
    return out


async def _fault_trial(rig: FaultRig, api: Api, host: str, kind: str,
                       trial: int) -> tuple[float, float, list[str]]:
    await _healthy(api, host)
    vm_a = await api.running_vm(host, f"{kind}-a-{trial}")
    vm_b = await api.running_vm(host, f"{kind}-b-{trial}")
    await asyncio.sleep(0.3)
    # In flight: a clean shutdown (30 s on this slave) when the fault strikes.
    inflight = asyncio.ensure_future(timed(api.vms.ShutdownVM(
        vs.ShutdownVMRequest(uuid=vm_a, force=False), timeout=120)))
    await asyncio.sleep(0.3)
    t_fault = time.monotonic()
    rig.freeze(kind)
    try:
        await asyncio.sleep(0.2)
        t_call = time.monotonic()
        end_first, outcome_first = await timed(api.vms.PauseVM(vs.PauseVMRequest(uuid=vm_b),
                                                               timeout=120))
        end_inflight, outcome_inflight = await inflight
    finally:
        rig.thaw(kind)
    return (end_first - t_call, end_inflight - t_fault,
            [f"first:{outcome_first}", f"in-flight:{outcome_inflight}"])


async def _side_by_side(rig: FaultRig, api: Api, host: str, kind: str) -> dict:
    """One fault window: our forwarded calls and an xapi-style forwarder's calls."""
    await _healthy(api, host)
    vm_a = await api.running_vm(host, f"{kind}-xs-a")
    vm_b = await api.running_vm(host, f"{kind}-xs-b")
    # xapi-style: one cached channel straight to the slave, no options at all. Its
    # domains are VMs the master knows (it would reconcile unknown ones away).
    dom_a = await api.running_vm(host, f"{kind}-xs-c")
    dom_b = await api.running_vm(host, f"{kind}-xs-d")
    plain = grpc.aio.insecure_channel(rig.slave.address)
    stub = sl_grpc.SlaveServiceStub(plain)
    try:
        await stub.ListDomains(sl.ListDomainsRequest())  # a warm, cached connection
        await asyncio.sleep(0.3)
        ours_inflight = asyncio.ensure_future(timed(api.vms.ShutdownVM(
            vs.ShutdownVMRequest(uuid=vm_a, force=False), timeout=120)))
        xapi_inflight = asyncio.ensure_future(timed(
            stub.ShutdownDomain(sl.ShutdownDomainRequest(vm_uuid=dom_a, force=False))))
        await asyncio.sleep(0.3)
        t_fault = time.monotonic()
        rig.freeze(kind)
        try:
            await asyncio.sleep(0.2)
            t_call = time.monotonic()
            ours_first = asyncio.ensure_future(timed(api.vms.PauseVM(
                vs.PauseVMRequest(uuid=vm_b), timeout=120)))
            xapi_first = asyncio.ensure_future(timed(
                stub.PauseDomain(sl.PauseDomainRequest(vm_uuid=dom_b))))
            calls = {"ours_first": (ours_first, t_call), "ours_in_flight": (ours_inflight, t_fault),
                     "xapi_first": (xapi_first, t_call), "xapi_in_flight": (xapi_inflight, t_fault)}
            await asyncio.wait([c for c, _ in calls.values()], timeout=XAPI_WAIT + 1)
            result = {}
            for name, (task, start) in calls.items():
                if task.done():
                    end, outcome = task.result()
                    result[name] = {"s": round(end - start, 3), "outcome": outcome}
                else:
                    task.cancel()
                    result[name] = {"s": f"> {XAPI_WAIT:.0f}", "outcome": "still waiting"}
        finally:
            rig.thaw(kind)
        log(f"  {kind} side by side: " + "; ".join(
            f"{k} {v['s']} s {v['outcome']}" for k, v in result.items()))
        result["load"] = common.load_note()
        return result
    finally:
        await plain.close()


# -- HOST_OFFLINE and calls in flight at the death of a host ------------------------------


async def bench_offline(work: Path, calls: int) -> dict:
    master = Master(work / "offline.db")
    slave = None
    api = Api(master.address)
    try:
        slave = Slave(master.address, work / "offline-slave", name="offline",
                      extra=["--boot-time", "0", "--pause-time", "0"])
        host = slave.uuid
        await common.wait_live(master.address, host, True)
        vm = await api.running_vm(host, "offline-vm")
        slave.kill()
        await common.wait_live(master.address, host, False)
        lat: dict[str, list[float]] = {"PauseVM": [], "EnableHost": []}
        outcomes: dict[str, int] = {}
        for i in range(calls):
            for name in lat:
                call = (api.vms.PauseVM(vs.PauseVMRequest(uuid=vm), timeout=5)
                        if name == "PauseVM" else
                        api.hosts.EnableHost(hs.EnableHostRequest(uuid=host), timeout=5))
                t0 = time.monotonic()
                end, outcome = await timed(call)
                lat[name].append(end - t0)
                outcomes[f"{name}:{outcome}"] = outcomes.get(f"{name}:{outcome}", 0) + 1
    finally:
        await api.close()
        if slave:
            slave.kill()
        master.stop()
    result = {name: summarize(v).__dict__ for name, v in lat.items()}
    result["outcomes"] = outcomes
    result["target_p99_ms"] = 5
    result["met"] = all(summarize(v).p99 < 0.005 for v in lat.values())
    result["load"] = common.load_note()
    log(f"  HOST_OFFLINE: PauseVM p50 {result['PauseVM']['median'] * 1000:.2f} ms "
        f"p99 {result['PauseVM']['p99'] * 1000:.2f} ms; EnableHost p50 "
        f"{result['EnableHost']['median'] * 1000:.2f} ms p99 "
        f"{result['EnableHost']['p99'] * 1000:.2f} ms; {outcomes}")
    return result


async def bench_inflight(work: Path, trials: int, per_trial: int = 8) -> dict:
    """Calls in flight (clean shutdowns, 30 s) when the host is declared not live."""
    master = Master(work / "inflight.db", dead_after=LONG_DEAD_AFTER)
    api = Api(master.address)
    watcher = await common.LivenessWatcher(master.address).start()
    state = work / "inflight-slave"
    rows: dict[str, list[float]] = {"SIGKILL": [], "DeclareDead": []}
    from_fault: dict[str, list[float]] = {"SIGKILL": [], "DeclareDead": []}
    outcomes: dict[str, int] = {}
    slave = None
    try:
        for trial in range(trials):
            for how in ("SIGKILL", "DeclareDead"):
                slave = Slave(master.address, state, name="inflight",
                              extra=["--clean-shutdown-time", "30", "--boot-time", "0"])
                host = slave.uuid
                await common.wait_live(master.address, host, True)
                vms = [await api.running_vm(host, f"if-{how}-{trial}-{i}")
                       for i in range(per_trial)]
                await asyncio.sleep(0.3)
                calls = [asyncio.ensure_future(timed(api.vms.ShutdownVM(
                    vs.ShutdownVMRequest(uuid=v, force=False), timeout=120))) for v in vms]
                await asyncio.sleep(0.5)
                t0 = time.monotonic()
                if how == "SIGKILL":
                    slave.signal(signal.SIGKILL)
                else:
                    slave.signal(signal.SIGSTOP)
                    await api.hosts.DeclareDead(hs.DeclareDeadRequest(uuid=host), timeout=5)
                flip = await watcher.wait(host, False, timeout=10, after=t0)
                done = await asyncio.gather(*calls)
                flip = flip or float("nan")
                after_flip = [end - flip for end, _ in done]
                rows[how].append(max(after_flip))
                from_fault[how].append(max(end - t0 for end, _ in done))
                for _, outcome in done:
                    outcomes[f"{how}:{outcome}"] = outcomes.get(f"{how}:{outcome}", 0) + 1
                log(f"  {how} trial {trial + 1}: {per_trial} calls in flight ended "
                    f"{max(after_flip) * 1000:.1f} ms after live=false reached a watcher "
                    f"(latest), {max(end - t0 for end, _ in done) * 1000:.1f} ms after "
                    f"the fault; {sorted(set(o for _, o in done))}")
                slave.kill()
                slave = None
    finally:
        await watcher.close()
        await api.close()
        if slave:
            slave.kill()
        master.stop()
    result = {how: {"after_not_live": summarize(v).__dict__,
                    "after_fault": summarize(from_fault[how]).__dict__}
              for how, v in rows.items()}
    result["outcomes"] = outcomes
    result["calls_per_trial"] = per_trial
    result["met"] = all(summarize(v).high <= 0.100 for v in from_fault.values())
    result["load"] = common.load_note()
    return result


# -- overhead ----------------------------------------------------------------------------


async def _client_worker(a: argparse.Namespace) -> None:
    """Child process: alternate pause/unpause on `targets` for `seconds` at
    `concurrency`; prints one JSON line."""
    channel = grpc.aio.insecure_channel(a.target, options=[("grpc.use_local_subchannel_pool", 1)])
    targets = a.targets.split(",")
    if a.mode == "forwarded":
        stub = vs_grpc.VMServiceStub(channel)
        pause = lambda t: stub.PauseVM(vs.PauseVMRequest(uuid=t), timeout=10)  # noqa: E731
        unpause = lambda t: stub.UnpauseVM(vs.UnpauseVMRequest(uuid=t), timeout=10)  # noqa: E731
    else:
        stub = sl_grpc.SlaveServiceStub(channel)
        pause = lambda t: stub.PauseDomain(sl.PauseDomainRequest(vm_uuid=t), timeout=10)  # noqa: E731
        unpause = lambda t: stub.UnpauseDomain(sl.UnpauseDomainRequest(vm_uuid=t), timeout=10)  # noqa: E731
    latencies: list[float] = []
    errors: dict[str, int] = {}
    warm_end = time.monotonic() + a.warmup
    end = warm_end + a.seconds

    async def loop(target: str) -> None:
        paused = False
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                await (unpause(target) if paused else pause(target))
                paused = not paused
                if t0 >= warm_end:
                    latencies.append(time.monotonic() - t0)
            except grpc.aio.AioRpcError as exc:
                if reason(exc) == "VM_BAD_POWER_STATE":  # left paused by an earlier run
                    paused = not paused
                    continue
                errors[reason(exc)] = errors.get(reason(exc), 0) + 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(loop(targets[i % len(targets)]) for i in range(a.concurrency)))
    await channel.close()
    s = summarize(latencies)
    print(json.dumps({"calls": len(latencies), "per_s": len(latencies) / a.seconds,
                      "p50": s.median, "p99": s.p99, "errors": errors}), flush=True)


def _run_client(mode: str, target: str, targets: list[str], concurrency: int,
                seconds: float) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--client-worker", "--mode", mode,
            "--target", target, "--targets", ",".join(targets), "--concurrency",
            str(concurrency), "--seconds", str(seconds)]
    proc = common.Proc(argv, f"fwd-client-{mode}", cpus=set(range(os.cpu_count() or 1)))
    try:
        line = proc.wait_line("{", seconds + 60)
    finally:
        proc.stop(5)
    return json.loads("{" + line)


class _BareForwarder(common.Proc):
    """benchmarks/bare_forwarder.py on the master's core."""

    def __init__(self, slave: str, db: Path | None) -> None:
        argv = [sys.executable, str(Path(__file__).with_name("bare_forwarder.py")),
                "--slave", slave] + (["--db", str(db)] if db else [])
        super().__init__(argv, "bare-forwarder", cpus=common.MASTER_CPUS)
        self.address = self.wait_line("listening on ", 30)


def _bare(slave: str, db: Path | None) -> _BareForwarder:
    return _BareForwarder(slave, db)


async def bench_overhead(work: Path, seconds: float, concurrency: int,
                         db_dir: str | None = None, baseline: str = "") -> dict:
    """`db_dir`: where the master's database lives (e.g. /dev/shm, to show what the
    durable write of each state change costs). `baseline`: a checkout of an older
    commit whose master is measured too, side by side (an A/B of a change)."""
    master = Master(Path(db_dir or work) / f"overhead-{os.getpid()}.db")
    base = base_slave = None
    if baseline:
        base = Master(Path(db_dir or work) / f"baseline-{os.getpid()}.db", tree=baseline)
    api = Api(master.address)
    slave = direct = None
    try:
        opts = ["--pause-time", "0", "--boot-time", "0"]
        slave = Slave(master.address, work / "overhead-slave", name="overhead", extra=opts)
        # The direct slave's master is nobody (a closed loopback port): a master would
        # reconcile away domains it does not know.
        nobody = f"127.0.0.1:{free_port()}"
        direct = Slave(nobody, work / "direct-slave", name="direct", extra=opts)
        await common.wait_live(master.address, slave.uuid, True)
        vms = [await api.running_vm(slave.uuid, f"ovh-{i}") for i in range(concurrency)]
        base_vms: list[str] = []
        if base:
            base_slave = Slave(base.address, work / "baseline-slave", name="baseline", extra=opts)
            await common.wait_live(base.address, base_slave.uuid, True)
            base_api = Api(base.address)
            base_vms = [await base_api.running_vm(base_slave.uuid, f"base-{i}")
                        for i in range(concurrency)]
            await base_api.close()
        plain = grpc.aio.insecure_channel(direct.address)
        dstub = sl_grpc.SlaveServiceStub(plain)
        domains = [f"direct-{i}" for i in range(concurrency)]
        for d in domains:
            await dstub.StartDomain(sl.StartDomainRequest(vm_uuid=d, memory=GIB, vcpus=1),
                                    timeout=10)
        await plain.close()
        result = {}
        # Side by side (issue 10): a bare grpc.aio forwarder to the direct slave,
        # without and with our store's durable write, on the master's core.
        bare = _bare(direct.address, None)
        bare_db = _bare(direct.address, Path(db_dir or work) / f"bare-{os.getpid()}.db")
        runs = (("direct", "direct", direct.address, domains, None),
                ("bare", "forwarded", bare.address, domains, bare),
                ("bare+store", "forwarded", bare_db.address, domains, bare_db),
                ("forwarded", "forwarded", master.address, vms, master))
        if base:
            runs = runs + (("baseline", "forwarded", base.address, base_vms, base),)
        try:
            for c in (1, concurrency):
                for label, mode, target, names, server in runs:
                    common.wait_quiet(limit=1.0, timeout=60, log=log)
                    c0 = common.cpu_seconds(server.pid) if server else 0.0
                    r = await asyncio.to_thread(_run_client, mode, target, names[:c], c, seconds)
                    if server:  # warm-up calls are not counted: scale them in
                        calls = max(1, r["calls"]) * (seconds + 1.0) / seconds
                        r["master_cpu_us_per_call"] = round(
                            (common.cpu_seconds(server.pid) - c0) / calls * 1e6)
                    r["load"] = common.load_note()
                    result[f"{label}_c{c}"] = r
                    log(f"  {label} c={c}: {r['per_s']:.0f} calls/s, p50 {r['p50'] * 1000:.2f} "
                        f"ms, p99 {r['p99'] * 1000:.2f} ms, cpu/call "
                        f"{r.get('master_cpu_us_per_call', '-')} us, errors {r['errors']}; "
                        f"{r['load']}")
        finally:
            bare.stop()
            bare_db.stop()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{Path(db_dir or work) / f'bare-{os.getpid()}.db'}{suffix}")
        ratio = result["forwarded_c1"]["p50"] / result["direct_c1"]["p50"]
        result["p50_ratio_c1"] = round(ratio, 2)
        result["met"] = ratio <= 2.5 and result[f"forwarded_c{concurrency}"]["per_s"] >= 2000
        return result
    finally:
        await api.close()
        for p in (slave, direct, base_slave):
            if p:
                p.stop()
        master.stop()
        if base:
            base.stop()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{master.db}{suffix}")


# -- main ---------------------------------------------------------------------------------


def print_summary(r: dict) -> None:
    rows = []
    f = r.get("faults", {})
    for kind in ("SIGSTOP", "partition"):
        k = f.get(kind)
        if k:
            for what in ("first_call", "in_flight"):
                s = k[what]
                rows.append([f"{kind}: {what.replace('_', ' ')} fails", f"{s['median']:.3f} s",
                             f"{s['low']:.3f}-{s['high']:.3f} s", s["n"],
                             f"<= {CONTACT + 0.5} s", s["high"] <= CONTACT + 0.5])
        x = f.get(f"{kind}_side_by_side")
        if x:
            for name in ("ours_first", "ours_in_flight", "xapi_first", "xapi_in_flight"):
                rows.append([f"{kind}: {name.replace('_', ' ')}", f"{x[name]['s']} s",
                             x[name]["outcome"], 1, "", ""])
    o = r.get("offline")
    if o and "PauseVM" in o:
        for name in ("PauseVM", "EnableHost"):
            s = o[name]
            rows.append([f"HOST_OFFLINE {name} p50/p99",
                         f"{s['median'] * 1000:.2f}/{s['p99'] * 1000:.2f} ms",
                         f"max {s['high'] * 1000:.2f} ms", s["n"], "p99 < 5 ms",
                         s["p99"] < 0.005])
    i = r.get("inflight")
    if i and "SIGKILL" in i:
        for how in ("SIGKILL", "DeclareDead"):
            s, t = i[how]["after_not_live"], i[how]["after_fault"]
            rows.append([f"in flight, {how}: last call ends after fault",
                         f"{t['median'] * 1000:.1f} ms", f"{t['low'] * 1000:.1f}-"
                         f"{t['high'] * 1000:.1f} ms", t["n"], "<= 100 ms", t["high"] <= 0.1])
    v = r.get("overhead")
    if v and "direct_c1" in v:
        for key in [k for k in v if k.endswith(tuple(f"_c{c}" for c in (1, 32)))
                    or k.startswith(("direct_c", "forwarded_c"))]:
            x = v[key]
            if isinstance(x, dict) and "per_s" in x:
                rows.append([f"overhead {key}", f"p50 {x['p50'] * 1000:.2f} ms",
                             f"{x['per_s']:.0f} calls/s", x["calls"], "", ""])
        rows.append(["forwarded/direct p50 at c=1", v["p50_ratio_c1"], "", "", "<= 2.5",
                     v["p50_ratio_c1"] <= 2.5])
    if rows:
        print(common.table(rows, ["measure", "median", "spread", "n", "target", "met"]))


async def main_async(a: argparse.Namespace) -> dict:
    work = common.work_dir("bench-forwarding-")
    sections = a.only.split(",")
    results: dict = {"machine": common.machine_line(), "start_load": common.load_note()}
    log(f"# {results['machine']}; {results['start_load']}")
    log("# master pinned to core 0, slaves to core 1")
    try:
        if "faults" in sections or "xapi" in sections:
            log("faults:")
            results["faults"] = await bench_faults(work, a.trials, "xapi" in sections,
                                                   "faults" in sections)
        if "offline" in sections:
            log("HOST_OFFLINE:")
            results["offline"] = await bench_offline(work, a.offline_calls)
        if "inflight" in sections:
            log("in flight at death:")
            results["inflight"] = await bench_inflight(work, a.inflight_trials)
        if "overhead" in sections:
            log("overhead:")
            results["overhead"] = await bench_overhead(work, a.seconds, a.concurrency, a.db_dir,
                                                       a.baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="faults,xapi,offline,inflight,overhead")
    p.add_argument("--trials", type=int, default=10, help="trials per fault kind")
    p.add_argument("--inflight-trials", type=int, default=5)
    p.add_argument("--offline-calls", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0, help="per overhead run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--baseline", default="", metavar="DIR",
                   help="overhead: also measure the master of this checkout (an older commit)")
    p.add_argument("--db-dir", help="overhead: the master's database directory "
                   "(default: a temporary directory on disk; /dev/shm shows the fsync share)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--targets", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=float, default=1.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.client_worker:
        asyncio.run(_client_worker(a))
        return 0
    if not 1 <= a.trials <= 50 or not 0 < a.seconds <= 120 or not 1 <= a.concurrency <= 256:
        p.error("trials 1..50, seconds (0, 120], concurrency 1..256")
    common.install_sigterm_handler()
    common.pin_self(common.LOAD_CPUS)
    return common.finish(lambda: asyncio.run(main_async(a)), print_summary, a.json)


if __name__ == "__main__":
    sys.exit(main())
