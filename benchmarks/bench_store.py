#!/usr/bin/env python3
"""Store and API benchmark (issue 2): durable CreateVM rate with concurrent clients,
ListVMs latency with 100,000 VMs stored, master restart time with 100,000 VMs.

    .venv/bin/python benchmarks/bench_store.py              # the figures of BENCHMARKS.md
    .venv/bin/python benchmarks/bench_store.py --quick      # a smoke run (seconds)

A real `xcp-master` process serves on loopback, pinned to core 0; the clients
(grpc.aio, one connection each) run in this process, pinned to core 1 (see
benchmarks/common.py), so the master's figures are not shared with its load.
Every measurement runs --runs times (3 by default) and is reported as
median (min-max, n). The 100,000 VMs are written into the SQLite file directly
with the store API (SqliteStore + Put, batches of 1,000), not by 100,000 RPCs;
the file is the same as the master would have written (objects plus change log).

Bounded: every RPC has a deadline, every wait a limit, a watchdog ends the run
after --budget seconds, and every process started is killed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid as uuid_module
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repo on sys.path)
from common import (  # noqa: E402
    LOAD_CPUS, CpuMeter, Master, aio_channel, install_sigterm_handler, load_note,
    machine_line, pin_self, rss_bytes, summarize, wait_quiet,
)

import grpc  # noqa: E402

from xcp_control.master.store import Put  # noqa: E402
from xcp_control.master.sqlite_store import SqliteStore  # noqa: E402
from xcp.v1 import datamodel_pb2 as dm  # noqa: E402
from xcp.v1 import vm_service_pb2 as vs  # noqa: E402
from xcp.v1 import vm_service_pb2_grpc  # noqa: E402

GIB = 1 << 30
RPC_TIMEOUT = 30.0


def say(*args) -> None:
    print(*args, flush=True)


# -- durable CreateVM rate ------------------------------------------------------------


async def create_burst(address: str, clients: int, warmup: float,
                       duration: float, master_pid: int) -> dict:
    """`clients` callers, one connection each, CreateVM back to back. Counts the
    calls answered within `duration` after `warmup`; each answer means the VM is on
    disk (WAL, synchronous=FULL, group commit)."""
    channels = [aio_channel(address) for _ in range(clients)]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 10)
        stubs = [vm_service_pb2_grpc.VMServiceStub(ch) for ch in channels]
        latencies: list[float] = []
        counted = 0
        measuring = False
        stop = False

        async def caller(i: int) -> None:
            nonlocal counted
            n = 0
            while not stop:
                request = vs.CreateVMRequest(name_label=f"bench-{i}-{n}", memory=GIB, vcpus=1)
                n += 1
                t0 = time.perf_counter()
                await stubs[i].CreateVM(request, timeout=RPC_TIMEOUT)
                if measuring:
                    latencies.append(time.perf_counter() - t0)
                    counted += 1

        tasks = [asyncio.ensure_future(caller(i)) for i in range(clients)]
        try:
            await asyncio.sleep(warmup)
            measuring = True
            meter, own = CpuMeter(master_pid), CpuMeter(os.getpid())
            t0 = time.perf_counter()
            await asyncio.sleep(duration)
            measuring = False
            elapsed = time.perf_counter() - t0
            cpu, client_cpu = meter.read(), own.read()
            stop = True
            await asyncio.wait_for(asyncio.gather(*tasks), RPC_TIMEOUT + 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return {"rate": counted / elapsed, "latencies": latencies, "cpu": cpu,
                "client_cpu": client_cpu}
    finally:
        for ch in channels:
            await ch.close()


def bench_create(work: Path, args) -> dict:
    rates, latencies, cpus, client_cpus = [], [], [], []
    for run in range(args.runs):
        db = work / f"create-{run}.db"
        master = Master(db)
        try:
            result = asyncio.run(create_burst(master.address, args.clients, args.warmup,
                                              args.duration, master.pid))
        finally:
            master.stop()
        rates.append(result["rate"])
        latencies += result["latencies"]
        cpus.append(result["cpu"])
        client_cpus.append(result["client_cpu"])
        say(f"  run {run + 1}: {result['rate']:.0f} CreateVM/s, master CPU "
            f"{result['cpu'] * 100:.0f}% of a core, clients {result['client_cpu'] * 100:.0f}%")
    return {"rate": summarize(rates), "latency": summarize(latencies), "cpu": summarize(cpus),
            "client_cpu": summarize(client_cpus)}


# -- 100,000 VMs ----------------------------------------------------------------------


async def populate(db: Path, vms: int, hosts: int, batch: int = 1000) -> dict:
    """Write `hosts` hosts (not live) and `vms` VMs straight into the pool database:
    70 % RUNNING spread over the hosts, the rest HALTED."""
    rng = random.Random(2)
    store = await SqliteStore(str(db)).open()
    try:
        host_uuids = []
        ops: list[Put] = []
        for i in range(hosts):
            host = dm.Host(uuid=str(uuid_module.uuid4()), name_label=f"host-{i:03d}",
                           address=f"127.0.0.1:{20000 + i}", enabled=True,
                           metrics=str(uuid_module.uuid4()))
            host_uuids.append(host.uuid)
            ops += [Put(host), Put(dm.HostMetrics(uuid=host.metrics, host=host.uuid,
                                                  live=False, memory_total=512 * GIB,
                                                  memory_free=256 * GIB))]
        await store.commit(ops)
        for start in range(0, vms, batch):
            ops = []
            for i in range(start, min(start + batch, vms)):
                running = rng.random() < 0.7
                ops.append(Put(dm.VM(
                    uuid=str(uuid_module.uuid4()), name_label=f"vm-{i:06d}",
                    power_state=dm.RUNNING if running else dm.HALTED,
                    resident_on=host_uuids[i % hosts] if running else "",
                    memory=rng.choice([1, 2, 4, 8]) * GIB, vcpus=rng.choice([1, 2, 4]),
                    other_config={"owner": f"team-{i % 17}"})))
            await store.commit(ops)
        return {"hosts": host_uuids, "vm_sample": [v.uuid for v in store.list("vm")[:1000]]}
    finally:
        await store.close()


async def list_latencies(address: str, calls: int, host: str, vm_uuids: list[str]) -> dict:
    """Latency of ListVMs variants, measured one call at a time."""
    async with aio_channel(address) as ch:
        await asyncio.wait_for(ch.channel_ready(), 10)
        stub = vm_service_pb2_grpc.VMServiceStub(ch)
        raw = ch.unary_unary("/xcp.v1.VMService/ListVMs",
                             request_serializer=vs.ListVMsRequest.SerializeToString,
                             response_deserializer=None)  # bytes: no client-side parsing
        out: dict[str, list[float]] = {k: [] for k in ("all", "all_wire", "host", "halted",
                                                        "get")}
        sizes = {}

        async def timed(key: str, coro_fn) -> object:
            t0 = time.perf_counter()
            reply = await coro_fn()
            out[key].append(time.perf_counter() - t0)
            return reply

        all_request = vs.ListVMsRequest()
        for _ in range(calls):
            reply = await timed("all", lambda: stub.ListVMs(all_request, timeout=RPC_TIMEOUT))
            sizes["all"] = (len(reply.vms), reply.ByteSize())
            await timed("all_wire", lambda: raw(all_request, timeout=RPC_TIMEOUT))
            reply = await timed("host", lambda: stub.ListVMs(
                vs.ListVMsRequest(host=host), timeout=RPC_TIMEOUT))
            sizes["host"] = (len(reply.vms), reply.ByteSize())
            reply = await timed("halted", lambda: stub.ListVMs(
                vs.ListVMsRequest(power_state=dm.HALTED), timeout=RPC_TIMEOUT))
            sizes["halted"] = (len(reply.vms), reply.ByteSize())
            for vm_uuid in random.sample(vm_uuids, 20):
                await timed("get", lambda: stub.GetVM(vs.GetVMRequest(uuid=vm_uuid),
                                                      timeout=RPC_TIMEOUT))
        return {"latencies": out, "sizes": sizes}


async def first_answer(address: str, vm_uuid: str, deadline: float) -> float:
    """Monotonic time of the first answered GetVM (retrying while the port refuses,
    until `deadline`)."""
    async with aio_channel(address) as ch:
        stub = vm_service_pb2_grpc.VMServiceStub(ch)
        while True:
            try:
                await stub.GetVM(vs.GetVMRequest(uuid=vm_uuid), timeout=2)
                return time.monotonic()
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    return time.monotonic()  # an answer (HANDLE_INVALID on an empty pool)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)


def timed_start(db: Path, vm_uuid: str) -> tuple[Master, float, float]:
    """Start a master on `db`: (master, s to its listening line, s to first answer)."""
    t0 = time.monotonic()
    master = Master(db, start_timeout=120)
    listening = master.listening_at - t0
    try:
        answered = asyncio.run(first_answer(master.address, vm_uuid, time.monotonic() + 30)) - t0
    except BaseException:
        master.stop()
        raise
    return master, listening, answered


def bench_large(work: Path, args) -> dict:
    db = work / "large.db"
    t0 = time.monotonic()
    info = asyncio.run(populate(db, args.vms, args.hosts))
    populate_s = time.monotonic() - t0
    size_mb = sum(p.stat().st_size for p in work.glob("large.db*")) / 1e6
    say(f"  pre-populated {args.vms:,} VMs and {args.hosts} hosts directly with the store API "
        f"(SqliteStore + Put, batches of 1,000) in {populate_s:.1f} s; database {size_mb:.0f} MB")
    vm_uuid = info["vm_sample"][0]

    lat: dict[str, list[float]] = {}
    sizes = {}
    restart_listen, restart_answer, kill_listen, kill_answer, rss = [], [], [], [], []
    master, _, _ = timed_start(db, vm_uuid)
    try:
        for run in range(args.runs):
            result = asyncio.run(list_latencies(master.address, args.list_calls,
                                                info["hosts"][0], info["vm_sample"]))
            for key, values in result["latencies"].items():
                lat.setdefault(key, []).extend(values)
            sizes = result["sizes"]
            rss.append(rss_bytes(master.pid))
            say(f"  run {run + 1}: ListVMs all {summarize(result['latencies']['all']).fmt()}")
        for run in range(args.runs):  # clean restarts: SIGTERM, start again
            assert master.stop() == 0, "master did not stop cleanly"
            master, listening, answered = timed_start(db, vm_uuid)
            restart_listen.append(listening)
            restart_answer.append(answered)
            say(f"  restart {run + 1} (after SIGTERM): listening after {listening:.2f} s, "
                f"first answer after {answered:.2f} s")
        for run in range(args.runs):  # crash restarts: SIGKILL, start again
            master.kill()
            master, listening, answered = timed_start(db, vm_uuid)
            kill_listen.append(listening)
            kill_answer.append(answered)
            say(f"  restart {run + 1} (after kill -9): listening after {listening:.2f} s, "
                f"first answer after {answered:.2f} s")
    finally:
        master.stop()
    conn = sqlite3.connect(db)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        (count,) = conn.execute("SELECT count(*) FROM objects WHERE class='vm'").fetchone()
    finally:
        conn.close()
    assert integrity == "ok" and count == args.vms, (integrity, count)
    return {"latency": {k: summarize(v) for k, v in lat.items()}, "sizes": sizes,
            "restart_listen": summarize(restart_listen),
            "restart_answer": summarize(restart_answer),
            "kill_listen": summarize(kill_listen), "kill_answer": summarize(kill_answer),
            "rss": summarize(rss), "populate_s": populate_s, "db_mb": size_mb}


def bench_empty_restart(work: Path, args) -> dict:
    """Baseline: start-up of a master on an empty database (interpreter, imports, bind)."""
    db = work / "empty.db"
    listen, answer = [], []
    for _ in range(args.runs):
        master, listening, answered = timed_start(db, str(uuid_module.uuid4()))
        master.stop()
        listen.append(listening)
        answer.append(answered)
    return {"listen": summarize(listen), "answer": summarize(answer)}


# -- main ---------------------------------------------------------------------------


def watchdog(budget: float) -> None:
    """End the run after `budget` seconds: SIGTERM ourselves (finally blocks and
    atexit kill every child), then a hard exit if that did not finish it."""
    def fire() -> None:
        say(f"bench_store: budget of {budget:.0f} s exceeded, stopping")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)
        common.processes.kill_leftovers()
        os._exit(3)
    threading.Thread(target=lambda: (time.sleep(budget), fire()), daemon=True,
                     name="watchdog").start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="repetitions of each measurement")
    p.add_argument("--clients", type=int, default=8, help="concurrent CreateVM clients")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per CreateVM run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before counting")
    p.add_argument("--vms", type=int, default=100_000, help="VMs stored for ListVMs/restart")
    p.add_argument("--hosts", type=int, default=100, help="hosts the running VMs spread over")
    p.add_argument("--list-calls", type=int, default=10, help="ListVMs calls per run")
    p.add_argument("--budget", type=float, default=900, help="hard limit on the whole run, s")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.vms, args.list_calls = 1.0, 0.3, 2_000, 2
    if args.runs < 1 or args.clients < 1 or args.vms < 1000 or args.hosts < 1:
        p.error("--runs, --clients, --hosts must be >= 1 and --vms >= 1000")

    install_sigterm_handler()
    watchdog(args.budget)
    pin_self(LOAD_CPUS)
    say(f"machine: {machine_line()}")
    say(f"nproc {os.cpu_count()}; master pinned to core 0, clients to core 1; "
        f"{args.runs} runs per measurement; figures are median (min-max, n)")
    wait_quiet(limit=0.7, timeout=60, log=say)
    say(f"before: {load_note()}")
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=os.environ.get("BENCH_DIR")))
    try:
        say(f"\n[1] durable CreateVM, {args.clients} concurrent clients (one connection each), "
            f"{args.duration:.0f} s per run after {args.warmup:.0f} s warm-up, fresh database")
        create = bench_create(work, args)
        say(f"\n[2] {args.vms:,} VMs stored: ListVMs latency and master restart time")
        large = bench_large(work, args)
        empty = bench_empty_restart(work, args)
        after = load_note()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lat, sizes = large["latency"], large["sizes"]
    say("\n== results ==")
    say(f"machine: {machine_line()}")
    say(f"load: {after}")
    say(f"CreateVM, {args.clients} clients, durable: {create['rate'].fmt('calls/s', 1, 0)}; "
        f"latency {create['latency'].fmt()} p99 {create['latency'].p99 * 1000:.1f} ms; "
        f"master CPU {create['cpu'].fmt('% of a core', 100, 0)}, "
        f"clients {create['client_cpu'].fmt('% of a core', 100, 0)}")
    say(f"ListVMs, all {sizes['all'][0]:,} VMs ({sizes['all'][1] / 1e6:.1f} MB), parsed by "
        f"the client: {lat['all'].fmt()}")
    say(f"ListVMs, all, bytes not parsed (server + transport): {lat['all_wire'].fmt()}")
    say(f"ListVMs, host filter ({sizes['host'][0]:,} VMs): {lat['host'].fmt(digits=2)}")
    say(f"ListVMs, power_state=HALTED ({sizes['halted'][0]:,} VMs): {lat['halted'].fmt()}")
    say(f"GetVM with {args.vms:,} stored: {lat['get'].fmt(digits=2)} "
        f"p99 {lat['get'].p99 * 1000:.2f} ms")
    say(f"master RSS with {args.vms:,} VMs: {large['rss'].fmt('MB', 1e-6, 0)}")
    say(f"restart with {args.vms:,} VMs after SIGTERM: listening "
        f"{large['restart_listen'].fmt('s', 1, 2)}, first answer "
        f"{large['restart_answer'].fmt('s', 1, 2)}")
    say(f"restart with {args.vms:,} VMs after kill -9: listening "
        f"{large['kill_listen'].fmt('s', 1, 2)}, first answer "
        f"{large['kill_answer'].fmt('s', 1, 2)}")
    say(f"restart, empty database (baseline): listening {empty['listen'].fmt('s', 1, 2)}, "
        f"first answer {empty['answer'].fmt('s', 1, 2)}")
    say(f"(the {args.vms:,} VMs were written with the store API directly, not via RPC: "
        f"{large['populate_s']:.1f} s, {large['db_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("bench_store: interrupted")
        sys.exit(130)
