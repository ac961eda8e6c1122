"""Liveness benchmarks (issue 3): how fast the master's live flag follows reality,
and what one master costs per heartbeating host.

    python benchmarks/bench_liveness.py                      # everything, short scale run
    python benchmarks/bench_liveness.py --only crash,stop --trials 10
    python benchmarks/bench_liveness.py --only scale --scale-hosts 10000 --duration 300

Sections (`--only`, comma-separated):
  crash      SIGKILL a real slave: time until live=false arrives on a Watch stream.
  stop       SIGSTOP a real slave: time until live=false; SIGCONT: time until live=true.
  partition  drop every packet of a slave's test host (netns + nftables): time until
             live=false; heal: time until live=true. Needs root.
  restart    master restart (SIGTERM, then SIGKILL) with 100 live simulated slaves:
             false live=false events (must be 0) and the time from the new master's
             "listening" line until every slave is back on a stream.
  scale      one master, N simulated hosts beating every second for --duration:
             master CPU (% of one core, /proc/<pid>/stat), RSS, ListHosts latency
             (a client issuing 4 a second meanwhile), false deaths.

Every time is measured on CLOCK_MONOTONIC, one clock for all processes here: the
fault is timestamped just before the signal / nft command, the flip when its Watch
event arrives in this process. The master runs on core 0, slaves, load generators
and this process on core 1 (sched_setaffinity before exec). Every process and test
host is cleaned up on the way out (try/finally, atexit). Traffic: loopback and our
own test hosts only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import contextlib
import os
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from benchmarks.common import Master, Slave, free_port, summarize  # noqa: E402
from benchmarks.loadgen import LoadGen  # noqa: E402

INTERVAL, DEAD_AFTER, CONTACT = 2.0, 3.0, 2.0  # the master's defaults (issue 10)
BACKGROUND = {"hosts": 0}  # --background-hosts: simulated hosts beside the fault's slave


def fault_master(db: Path, **kwargs) -> Master:
    return Master(db, heartbeat_interval=INTERVAL, dead_after=DEAD_AFTER, **kwargs)


@contextlib.asynccontextmanager
async def background(master: Master, seed: str):
    """BACKGROUND["hosts"] simulated hosts on `master` for the fault trials (the
    issue's "detection times at 10,000"), all up before the trials start."""
    n = BACKGROUND["hosts"]
    if not n:
        yield None
        return
    gen = LoadGen(master.address, n, procs=2, duration=3000, seed=seed,
                  open_rate=500.0 if n <= 4000 else 200.0).start()
    try:
        took = await asyncio.to_thread(gen.wait_open, None, 180 + n / gen.open_rate)
        log(f"  {n} background hosts up after {took:.1f} s")
        await asyncio.sleep(5.0)
        yield gen
    finally:
        t = gen.totals()
        log(f"  background: {t['up']} up, {t['broken']} streams broken, "
            f"{t['failed']} failed opens")
        gen.stop()
RESULTS: dict[str, object] = {}


def log(*args: object) -> None:
    print(*args, flush=True)


# -- crash: SIGKILL -----------------------------------------------------------------


async def bench_crash(work: Path, trials: int) -> dict:
    master = fault_master(work / "crash.db")
    slave = None
    times: list[float] = []
    watcher = None
    try:
        state = work / "crash-slave"
        watcher = await common.LivenessWatcher(master.address).start()
        for trial in range(trials):
            slave = Slave(master.address, state, name="crash")
            await common.wait_live(master.address, slave.uuid, True)
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            slave.signal(signal.SIGKILL)
            seen = await watcher.wait(slave.uuid, False, timeout=10, after=t0)
            slave.kill()
            times.append(seen - t0 if seen else float("inf"))
            log(f"  crash trial {trial + 1}: live=false after "
                f"{(seen - t0) * 1000 if seen else float('inf'):.1f} ms")
    finally:
        if watcher:
            await watcher.close()
        if slave:
            slave.kill()
        master.stop()
    s = summarize(times)
    return {"sigkill_to_not_live": s.__dict__, "target_ms": 250,
            "met": s.median < 0.250, "load": common.load_note()}


# -- SIGSTOP and partition ---------------------------------------------------------------


async def _freeze_trials(master: Master, slave: Slave, trials: int, freeze, thaw,
                         label: str) -> tuple[list[float], list[float]]:
    down, up = [], []
    watcher = await common.LivenessWatcher(master.address).start()
    try:
        await common.wait_live(master.address, slave.uuid, True, timeout=20)
        for trial in range(trials):
            await asyncio.sleep(1.5)  # a steady stream, a few beats in
            if not watcher.live.get(slave.uuid):
                await common.wait_live(master.address, slave.uuid, True, timeout=20)
                await asyncio.sleep(1.5)
            t0 = time.monotonic()
            freeze()
            try:
                seen = await watcher.wait(slave.uuid, False, timeout=DEAD_AFTER + 10, after=t0)
            finally:
                t1 = time.monotonic()
                thaw()
            back = await watcher.wait(slave.uuid, True, timeout=30, after=t1)
            d = (seen - t0) if seen else float("inf")
            u = (back - t1) if back else float("inf")
            down.append(d)
            up.append(u)
            log(f"  {label} trial {trial + 1}: live=false after {d:.3f} s, "
                f"live=true {u * 1000:.0f} ms after the thaw")
    finally:
        await watcher.close()
    return down, up


async def bench_stop(work: Path, trials: int) -> dict:
    master = fault_master(work / "stop.db")
    slave = None
    try:
        slave = Slave(master.address, work / "stop-slave", name="stop")
        async with background(master, "stop-bg"):
            down, up = await _freeze_trials(
                master, slave, trials, lambda: slave.signal(signal.SIGSTOP),
                lambda: slave.signal(signal.SIGCONT), "SIGSTOP")
    finally:
        if slave:
            slave.stop()
        master.stop()
    return _freeze_result(down, up)


def _freeze_result(down: list[float], up: list[float]) -> dict:
    d, u = summarize(down), summarize(up)
    return {"to_not_live": d.__dict__, "thaw_to_live": u.__dict__,
            "target_down_s": DEAD_AFTER + 0.5, "target_up_s": INTERVAL,
            "down_met": d.high <= DEAD_AFTER + 0.5, "up_met": u.median <= INTERVAL,
            "load": common.load_note()}


async def bench_partition(work: Path, trials: int) -> dict:
    from tests.support.netns import TestHost, can_make_test_hosts

    ok, why = can_make_test_hosts()
    if not ok:
        return {"skipped": why}
    host = TestHost().create()
    master = slave = None
    try:
        master = fault_master(work / "partition.db", listen=f"{host.root_ip}:0")
        slave = Slave(master.address, work / "partition-slave", listen=f"{host.host_ip}:0",
                      name="partition", host=host)
        async with background(master, "partition-bg"):
            down, up = await _freeze_trials(master, slave, trials, host.partition, host.heal,
                                            "partition")
    finally:
        with contextlib.suppress(Exception):
            host.heal()
        if slave:
            slave.stop()
        if master:
            master.stop()
        host.destroy()
    return _freeze_result(down, up)


# -- master restart ------------------------------------------------------------------


async def bench_restart(work: Path, trials: int, hosts: int = 100) -> dict:
    """Kill (SIGTERM, then SIGKILL) and restart the master on the same port and
    database while `hosts` simulated slaves beat; they reconnect with the real
    slave's full-jitter backoff (cap 1 s)."""
    db = work / "restart.db"
    port = free_port()
    listen = f"127.0.0.1:{port}"
    master = fault_master(db, listen=listen)
    gen = LoadGen(master.address, hosts, procs=1, duration=600, seed="restart",
                  report_sessions=True, goodbye=False).start()
    rows = []
    try:
        gen.wait_open(timeout=60)
        uuids = set(gen.uuids())
        await asyncio.sleep(2)
        for trial in range(trials):
            how = "SIGTERM" if trial % 2 == 0 else "SIGKILL"
            if how == "SIGTERM":
                master.stop()
            else:
                master.kill()
            t_down = time.monotonic()
            master = fault_master(db, listen=listen)
            listening = master.listening_at
            watcher = await common.LivenessWatcher(master.address).start()
            stored_live = sum(1 for u in uuids if watcher.live.get(u))
            # Judge after the grace (dead_after) and some more.
            await asyncio.sleep(DEAD_AFTER + 2.0)
            false_downs = watcher.count(False, since=listening, hosts=uuids)
            await watcher.close()
            back: dict[int, float] = {}
            for index, t in list(gen.sessions):
                if t >= t_down and index not in back:
                    back[index] = t
            all_back = (max(back.values()) - listening) if len(back) == hosts else float("inf")
            rows.append({"how": how, "down_s": round(listening - t_down, 3),
                         "stored_live": stored_live, "false_not_live": false_downs,
                         "reconnected": len(back), "all_back_s": round(all_back, 3)})
            log(f"  restart {trial + 1} ({how}): master down {listening - t_down:.2f} s, "
                f"{len(back)}/{hosts} back, all within {all_back:.3f} s of listening, "
                f"{false_downs} false live=false")
            await asyncio.sleep(1.0)
        totals = gen.totals()
    finally:
        gen.stop()
        master.stop()
    backs = summarize([r["all_back_s"] for r in rows])
    return {"hosts": hosts, "trials": rows, "all_back": backs.__dict__,
            "false_not_live": sum(r["false_not_live"] for r in rows),
            "loadgen": totals, "target_s": 2.0,
            "met": backs.high < 2.0 and all(r["false_not_live"] == 0 for r in rows),
            "load": common.load_note()}


# -- scale ---------------------------------------------------------------------------


async def _list_hosts_loop(address: str, stop: asyncio.Event, latencies: list[float],
                           errors: list[str], rate: float = 4.0,
                           slow: list | None = None) -> None:
    """ListHosts `rate` times a second; calls over 50 ms also go to `slow` as
    (monotonic start, seconds), to tell a one-off from a pattern."""
    from xcp.v1 import host_service_pb2 as hs, host_service_pb2_grpc as hs_grpc

    async with common.aio_channel(address) as ch:
        stub = hs_grpc.HostServiceStub(ch)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                await stub.ListHosts(hs.ListHostsRequest(), timeout=10)  # parsed, dropped
                latencies.append(time.monotonic() - t0)
                if slow is not None and latencies[-1] > 0.050:
                    slow.append((t0, latencies[-1]))
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc)[:200])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 1 / rate - (time.monotonic() - t0)))


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def _scrape_loop(url: str, stop: asyncio.Event, latencies: list[float],
                       last: list[str], every: float = 1.0) -> None:
    """Scrape the master's /metrics every second (a Prometheus scrapes every
    5-15 s: this is the pessimistic case), timing each scrape."""
    while not stop.is_set():
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            last[:] = [await asyncio.to_thread(_scrape, url)]
            latencies.append(time.monotonic() - t0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, every - (time.monotonic() - t0)))


def _live_hosts(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith('xcp_hosts{live="true"}'):
            return float(line.split()[-1])
    return None


def cpu_probe(pid: int, seconds: float) -> float:
    meter = common.CpuMeter(pid)
    time.sleep(seconds)
    return meter.read()


def _missed_lines(master: Master) -> int:
    return master.stderr_text().count("missed its heartbeats")


async def _hosts_up(address: str, uuids: set[str]) -> int:
    """How many of `uuids` the master lists live right now."""
    from xcp.v1 import host_service_pb2 as hs, host_service_pb2_grpc as hs_grpc

    async with common.aio_channel(address) as ch:
        answer = await hs_grpc.HostServiceStub(ch).ListHosts(hs.ListHostsRequest(), timeout=30)
    return sum(1 for m in answer.host_metrics if m.live and m.host in uuids)


async def bench_scale_one(work: Path, hosts: int, duration: float, procs: int,
                          server_options, label: str, open_rate: float = 0.0,
                          client: str = "h2", storm: bool = False,
                          timing: tuple[float, float, float] = (2.0, 3.0, 10.0),
                          metrics: bool = False, scrape: bool = True, ha: bool = False,
                          tree: str = "") -> dict:
    """`storm`: no load shedding on the master and the old reconnect policy on the
    slaves (BENCHMARKS.md: the reconnect storm), for A/B runs against the fix.
    `metrics`: the master serves /metrics and, with `scrape`, is scraped every
    second through both windows. `ha`: HA enabled on the pool (SetHaConfig) before
    the hosts join, and each Hello asks for fence_after 10 s, as real slaves'
    default does. `tree`: the master of another checkout (common.archived_tree)."""
    db = work / f"scale-{hosts}-{label}.db"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")
    interval, dead_after, report = timing
    metrics_url = f"http://127.0.0.1:{free_port()}/metrics" if metrics else ""
    extra = ["--shed-lag", "0"] if storm else []
    if metrics:
        extra += ["--metrics-listen", metrics_url[len("http://"):-len("/metrics")]]
    master = Master(db, server_options=server_options, heartbeat_interval=interval,
                    dead_after=dead_after, report_interval=report, extra=extra, tree=tree)
    gen = None
    try:
        if ha:
            await _enable_ha(master.address)
        await asyncio.sleep(1.0)
        idle_rss = common.rss_bytes(master.pid)
        gen = LoadGen(master.address, hosts, procs=procs, duration=duration + 600,
                      seed=f"scale-{hosts}",
                      open_rate=open_rate or (500.0 if hosts <= 4000 else 200.0),
                      cpus=common.LOAD_CPUS, client=client, old_reconnect=storm,
                      fence_after=10.0 if ha else 0.0).start()
        try:
            t_open = await asyncio.to_thread(gen.wait_open, None, 180 + hosts / gen.open_rate)
        except TimeoutError:  # the master cannot take them all: report how it failed
            t = gen.totals()
            r = {"hosts": hosts, "hosts_up": t["up"], "label": label, "collapsed": True,
                 "up": t["up"],
                 "failed_opens": t["failed"], "missed_log_lines": _missed_lines(master),
                 "load": common.load_note(), "met": False}
            r["master_cpu_pct"] = round(await asyncio.to_thread(cpu_probe, master.pid, 5) * 100, 1)
            log(f"  scale {hosts} ({label}): only {t['up']} of {hosts} streams up after "
                f"the ramp + 180 s; {t['failed']} failed opens; {r['missed_log_lines']} hosts reaped "
                f"(false deaths); master {r['master_cpu_pct']}% cpu; {r['load']}")
            return r
        watcher = await common.LivenessWatcher(master.address).start()
        await asyncio.sleep(5.0)  # settle: registrations written, flips published
        uuids = set(gen.uuids())
        missed0 = _missed_lines(master)
        t0 = time.monotonic()
        before = gen.totals()
        lg_cpu = [common.CpuMeter(w.pid) for w in gen.workers]
        rss_max = 0
        scraped = asyncio.Event()
        scrape_latencies: list[float] = []
        last_scrape: list[str] = []
        scraper = asyncio.ensure_future(
            _scrape_loop(metrics_url, scraped, scrape_latencies, last_scrape)
            if metrics and scrape else scraped.wait())
        # Window 1: heartbeats only. Window 2: heartbeats and ListHosts 4 times a second.
        quiet = max(10.0, duration / 3) if duration > 20 else duration / 2
        cpu = common.CpuMeter(master.pid)
        end = t0 + quiet
        while time.monotonic() < end:
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
            rss_max = max(rss_max, common.rss_bytes(master.pid))
        beats_cpu = cpu.read()
        cpu = common.CpuMeter(master.pid)
        stop = asyncio.Event()
        latencies: list[float] = []
        errors: list[str] = []
        slow: list = []
        lister = asyncio.ensure_future(_list_hosts_loop(master.address, stop, latencies, errors,
                                                        slow=slow))
        end = t0 + duration
        while time.monotonic() < end:
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
            rss_max = max(rss_max, common.rss_bytes(master.pid))
        stop.set()
        scraped.set()
        await lister
        await scraper
        master_cpu = cpu.read()
        loadgen_cpu = sum(c.read() for c in lg_cpu)
        elapsed = time.monotonic() - t0
        after = gen.totals()
        hosts_up = await _hosts_up(master.address, uuids)
        false_deaths = watcher.count(False, since=t0, hosts=uuids)
        missed = _missed_lines(master) - missed0
        await watcher.close()
    finally:
        if gen:
            gen.stop()
        master.stop()
    lat = summarize(latencies)
    beats = (after["beats"] - before["beats"]) / elapsed
    result = {
        "hosts": hosts, "hosts_up": hosts_up, "label": label,
        "heartbeat_interval_s": interval, "dead_after_s": dead_after, "report_interval_s": report,
        "duration_s": round(elapsed, 1),
        "open_s": round(t_open, 1), "beats_per_s": round(beats),
        "master_cpu_pct": round(beats_cpu * 100, 1),
        "master_cpu_pct_per_1000": round(beats_cpu * 100 / hosts * 1000, 2),
        "master_cpu_with_list_pct": round(master_cpu * 100, 1),
        "master_rss_mb": round(rss_max / 2**20), "idle_rss_mb": round(idle_rss / 2**20),
        "rss_kb_per_host": round((rss_max - idle_rss) / hosts / 1024, 1),
        "list_hosts_ms": {"n": lat.n, "p50": round(lat.median * 1000, 1),
                          "p99": round(lat.p99 * 1000, 1), "max": round(lat.high * 1000, 1)},
        "list_slow_calls": [[round(t - t0, 1), round(d * 1000, 1)] for t, d in slow[:20]],
        "list_errors": len(errors), "false_deaths": false_deaths, "missed_log_lines": missed,
        "loadgen_cpu_pct": round(loadgen_cpu * 100, 1),
        "pings_answered_per_s": round((after["pings_in"] - before["pings_in"]) / elapsed),
        "loadgen_pings_sent": after["pings_out"] - before["pings_out"],
        "loadgen_late_beats": after["late"] - before["late"],
        "loadgen_max_late_s": after["max_late"],
        "streams_broken": after["broken"] - before["broken"],
        "ha_configs_in_window": after["ha_configs"] - before["ha_configs"],
        "ha_configs": after["ha_configs"], "ha_peers_received": after["ha_peers"],
        "ha_config_mb": round(after["ha_bytes"] / 2**20, 1),
        "ha_config_mb_in_window": round((after["ha_bytes"] - before["ha_bytes"]) / 2**20, 1),
        "load": common.load_note(),
    }
    if metrics and scrape:
        scrapes = summarize(scrape_latencies)
        result["scrape_ms"] = {"n": scrapes.n, "p50": round(scrapes.median * 1000, 1),
                               "p99": round(scrapes.p99 * 1000, 1)}
        result["metrics_live_hosts"] = _live_hosts(last_scrape[0]) if last_scrape else None
    # The targets (issue 10): every host up, no false death, master < 50 %
    # of one core, ListHosts p99 < 50 ms meanwhile.
    result["met"] = (hosts_up == hosts and false_deaths == 0 and missed == 0
                     and master_cpu < 0.50 and lat.p99 < 0.050)
    # The one-line summary `--json` prints (issue 10's names).
    result["master_cpu_percent"] = round(master_cpu * 100, 1)
    result["listhosts_p99_ms"] = result["list_hosts_ms"]["p99"]
    log(f"  scale {hosts} ({label}): master {result['master_cpu_pct']}% cpu "
        f"({result['master_cpu_with_list_pct']}% with ListHosts), "
        f"{result['master_rss_mb']} MB, ListHosts p50 {result['list_hosts_ms']['p50']} ms "
        f"p99 {result['list_hosts_ms']['p99']} ms, {false_deaths} false deaths, "
        f"{beats:.0f} beats/s, loadgen {result['loadgen_cpu_pct']}% "
        f"late {result['loadgen_late_beats']}, HA configs {result['ha_configs']} "
        f"({result['ha_configs_in_window']} in the window), peer lists "
        f"{result['ha_config_mb']} MB ({result['ha_config_mb_in_window']} MB in the window); "
        f"{result['load']}"
        + (f"; scrape p50 {result['scrape_ms']['p50']} ms p99 {result['scrape_ms']['p99']} ms "
           f"(n={result['scrape_ms']['n']}), xcp_hosts{{live=true}} "
           f"{result['metrics_live_hosts']}" if metrics and scrape else ""))
    return result


async def _enable_ha(address: str) -> None:
    from xcp.v1 import pool_service_pb2 as ps, pool_service_pb2_grpc as ps_grpc

    async with common.aio_channel(address) as ch:
        await ps_grpc.PoolServiceStub(ch).SetHaConfig(ps.SetHaConfigRequest(enabled=True),
                                                      timeout=10)


async def bench_scale(work: Path, counts: list[int], duration: float, procs: int,
                      variants: list[str], open_rate: float = 0.0,
                      client: str = "h2",
                      timing: tuple[float, float, float] = (2.0, 3.0, 10.0)) -> list[dict]:
    out = []
    trees: dict[str, str] = {}
    for hosts in counts:
        for spec in variants:
            variant, _, commit = spec.partition("@")
            if commit and commit not in trees:
                trees[commit] = common.archived_tree(commit, work / f"tree-{len(trees)}")
            options = common.NO_BDP if variant == "no-bdp" else ()
            common.wait_quiet(log=log)
            out.append(await bench_scale_one(work, hosts, duration, procs, options,
                                             f"{spec}/{client}" if client != "h2" else spec,
                                             open_rate, client, storm=variant == "storm",
                                             timing=timing,
                                             metrics=variant.startswith("metrics"),
                                             scrape=variant == "metrics", ha=variant == "ha",
                                             tree=trees.get(commit, "")))
    return out


# -- main ------------------------------------------------------------------------------


def print_summary(results: dict) -> None:
    rows = []
    if "crash" in results and "sigkill_to_not_live" in results["crash"]:
        s = results["crash"]["sigkill_to_not_live"]
        rows.append(["SIGKILL -> live=false", f"{s['median'] * 1000:.1f} ms",
                     f"{s['low'] * 1000:.1f}-{s['high'] * 1000:.1f} ms", s["n"], "< 250 ms",
                     results["crash"]["met"]])
    for key, label in (("stop", "SIGSTOP"), ("partition", "partition")):
        r = results.get(key)
        if not r or "to_not_live" not in r:
            continue
        d, u = r["to_not_live"], r["thaw_to_live"]
        rows.append([f"{label} -> live=false", f"{d['median']:.3f} s",
                     f"{d['low']:.3f}-{d['high']:.3f} s", d["n"], f"<= {DEAD_AFTER + 0.5} s",
                     r["down_met"]])
        thaw = "SIGCONT" if key == "stop" else "heal"
        rows.append([f"{thaw} -> live=true", f"{u['median'] * 1000:.0f} ms",
                     f"{u['low'] * 1000:.0f}-{u['high'] * 1000:.0f} ms", u["n"],
                     f"<= {INTERVAL} s", r["up_met"]])
    r = results.get("restart")
    if r:
        b = r["all_back"]
        rows.append([f"restart, {r['hosts']} hosts back", f"{b['median']:.3f} s",
                     f"{b['low']:.3f}-{b['high']:.3f} s", b["n"], "< 2 s", r["met"]])
        rows.append(["restart, false live=false", r["false_not_live"], "", b["n"], "0",
                     r["false_not_live"] == 0])
    if rows:
        print(common.table(rows, ["measure", "median", "min-max", "n", "target", "met"]))
    if results.get("scale"):
        for r in results["scale"]:
            if r.get("collapsed"):
                print(f"{r['hosts']} hosts ({r['label']}): collapsed, {r['up']} up, "
                      f"{r['failed_opens']} failed opens, {r['missed_log_lines']} reaped")
        srows = [[r["hosts"], r["label"], r["beats_per_s"], f"{r['master_cpu_pct']}%",
                  r["master_cpu_pct_per_1000"], f"{r['master_cpu_with_list_pct']}%",
                  r["master_rss_mb"], r["rss_kb_per_host"],
                  r["list_hosts_ms"]["p50"], r["list_hosts_ms"]["p99"], r["false_deaths"],
                  r["loadgen_late_beats"], r["met"]] for r in results["scale"]
                 if not r.get("collapsed")]
        print(common.table(srows, ["hosts", "server", "beats/s", "cpu", "cpu/1k", "cpu+list",
                                   "rss_mb",
                                   "kb/host", "list p50", "list p99", "false", "late", "met"]))


async def main_async(a: argparse.Namespace) -> dict:
    work = common.work_dir("bench-liveness-")
    sections = a.only.split(",")
    results: dict = {"machine": common.machine_line(), "start_load": common.load_note()}
    log(f"# {results['machine']}; {results['start_load']}")
    log("# master pinned to core 0; slaves, load generators and this process to core 1")
    try:
        if "crash" in sections:
            log("crash (SIGKILL):")
            results["crash"] = await bench_crash(work, a.trials)
        if "stop" in sections:
            log("SIGSTOP:")
            results["stop"] = await bench_stop(work, a.trials)
        if "partition" in sections:
            log("partition:")
            results["partition"] = await bench_partition(work, a.trials)
        if "restart" in sections:
            log("master restart:")
            results["restart"] = await bench_restart(work, a.restart_trials, a.restart_hosts)
        if "scale" in sections:
            log("scale:")
            counts = [int(x) for x in a.scale_hosts.split(",")]
            results["scale"] = await bench_scale(
                work, counts, a.duration, a.procs, a.server.split(","), a.open_rate, a.client,
                timing=(a.heartbeat_interval, a.dead_after, a.report_interval))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="crash,stop,partition,restart,scale")
    p.add_argument("--trials", type=int, default=10, help="trials per fault (default 10)")
    p.add_argument("--restart-trials", type=int, default=6)
    p.add_argument("--restart-hosts", type=int, default=100)
    p.add_argument("--scale-hosts", "--hosts", default="1000",
                   help="comma-separated host counts")
    p.add_argument("--heartbeat-interval", type=float, default=2.0,
                   help="scale: the master's PING interval (default: the master's, %(default)s)")
    p.add_argument("--dead-after", type=float, default=3.0,
                   help="scale: the master's dead_after (default %(default)s)")
    p.add_argument("--report-interval", type=float, default=10.0,
                   help="scale: the master's report interval (default %(default)s)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds of steady beating per scale run (the issue's: 300)")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--background-hosts", type=int, default=0,
                   help="stop, partition: this many simulated hosts on the master meanwhile")
    p.add_argument("--server", default="stock",
                   help="scale: comma-separated variants: stock, no-bdp "
                        "(grpc.http2.bdp_probe=0 patched in; now the default anyway), storm "
                        "(no load shedding, slaves' old reconnect policy: the A/B of the fix), metrics "
                        "(--metrics-listen on, /metrics scraped every second), metrics-idle "
                        "(on, never scraped), ha (HA enabled on the pool before the hosts "
                        "join); VARIANT@COMMIT runs that commit's master (an A/B)")
    p.add_argument("--open-rate", type=float, default=0.0,
                   help="scale: first-stream opens per second (default 500, 200 above 4,000)")
    p.add_argument("--client", choices=("h2", "grpc"), default="h2",
                   help="scale: load generator client (loadgen.py; grpc only to calibrate)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line per scale run (hosts, hosts_up, false_deaths, "
                        "master_cpu_percent, listhosts_p99_ms, and the rest)")
    p.add_argument("--json-file", help="also write all the results here")
    a = p.parse_args(argv)
    if not 1 <= a.trials <= 100 or a.duration > 3600:
        p.error("trials 1..100, duration <= 3600")
    BACKGROUND["hosts"] = a.background_hosts
    common.install_sigterm_handler()
    common.raise_nofile()
    common.pin_self(common.LOAD_CPUS)

    def summary(results: dict) -> None:
        print_summary(results)
        if a.json:  # one line per scale run, for scripts (issue 10's command)
            for r in results.get("scale", []):
                print(json.dumps(r, default=str), flush=True)

    return common.finish(lambda: asyncio.run(main_async(a)), summary, a.json_file)


if __name__ == "__main__":
    sys.exit(main())
