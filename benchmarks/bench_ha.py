#!/usr/bin/env python3
"""Several masters on etcd (issue 11): failover after SIGKILL and SIGSTOP of the
leader, the durable CreateVM rate on a 3-member etcd beside SQLite, and a new
leader's time from election to serving with 100,000 VMs stored.

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_ha.py      # BENCHMARKS.md
    .venv/bin/python benchmarks/bench_ha.py --quick                       # smoke run

Real processes on loopback (tests/support/ha.py, the tests' harness): etcd
3.4 members, three `xcp-master --etcd` and two slaves (`--master a,b,c`).

- failover: the leader is SIGKILLed (then restarted on its port) or SIGSTOPped
  (then SIGCONTed once measured); "create" is the time from the signal until a
  CreateVM sent to another master succeeds (retried every few ms, 0.5 s
  deadline each), "slaves" until every slave has logged its stream to the new
  leader (also counted from the new leader's "won the election" log line: the
  issue wants every slave there within 1 s of it). False deaths: hosts the new
  leader lists as not live afterwards.
- rate: 8 grpc.aio clients, one channel each, CreateVM in a loop for a window,
  against the leader of a 3-member etcd and against one master on SQLite. Every
  variant's three masters (`--variant`: another commit's code and/or module
  constants set) run at once on one etcd, a prefix each, beside the SQLite
  master, and the rows take turns window by window; also as several client
  processes (`--client-procs`), through a follower, one client alone
  (`--lone`); CPU of each part (leader, followers, etcd, clients) from /proc.

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_ha.py --only rate \
        --variant before@274a708 --variant this --lone       # BENCHMARKS.md has the rest
- 100,000 VMs: written straight into etcd (txns of 1,000 puts); from the new
  leader's "won the election" log line to its first CreateVM answered.
Every figure is median (min-max, n).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuid_module
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_seconds, load_note, machine_line, summarize  # noqa: E402
from tests.support.ha import HaPool, get_pool  # noqa: E402
from tests.support.daemons import MasterProcess  # noqa: E402
from xcp.v1 import datamodel_pb2 as dm, host_service_pb2 as hs  # noqa: E402
from xcp.v1 import host_service_pb2_grpc, vm_service_pb2 as vs, vm_service_pb2_grpc  # noqa: E402

MiB = 1024 * 1024
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def secs(values, digits: int = 2) -> str:
    return summarize(values).fmt(unit="s", scale=1, digits=digits)


def log_time(line: str) -> float:
    stamp = _STAMP.match(line).group(1)
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_line_after(text: str, needle: str, after: float) -> float | None:
    for line in text.splitlines():
        if needle in line and _STAMP.match(line) and log_time(line) >= after:
            return log_time(line)
    return None


def create_once(address: str, timeout: float = 0.5) -> bool:
    with contextlib.closing(grpc.insecure_channel(address)) as ch:
        try:
            vm_service_pb2_grpc.VMServiceStub(ch).CreateVM(vs.CreateVMRequest(
                name_label="probe", memory=64 * MiB, vcpus=1), timeout=timeout)
            return True
        except grpc.RpcError:
            return False


def until(predicate, timeout: float, interval: float = 0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


# -- failover ------------------------------------------------------------------


def failover_trial(ha: HaPool, sig: int) -> tuple[float, float, float, int]:
    leader = ha.wait_leader()
    victim = ha.by_address(leader)
    other = ha.followers(leader)[0].address
    t0_wall, t0 = time.time(), time.monotonic()
    victim.kill(sig)
    until(lambda: create_once(other), 20, interval=0.002)
    create_s = time.monotonic() - t0
    new = ha.wait_leader(exclude=(leader,), timeout=20)
    stamps = until(lambda: all_connected(ha, new, t0_wall), 20, interval=0.05)
    slaves_s = (max(stamps) - t0_wall) if stamps else float("nan")
    won = first_line_after(ha.by_address(new).stderr_text(), "won the election", t0_wall)
    after_won_s = (max(stamps) - won) if stamps and won else float("nan")
    dead = false_deaths(new)
    if sig == signal.SIGSTOP:
        victim.kill(signal.SIGCONT)
        until(lambda: (p := get_pool(leader)) is not None and p.master == new, 20)
    else:
        index = ha.masters.index(victim)
        ha.masters[index] = MasterProcess(ha.root / f"unused-r{index}.db", listen=leader,
                                          extra_args=ha.master_argv(), log_dir=ha.root).start()
    return create_s, slaves_s, after_won_s, dead


def all_connected(ha: HaPool, new: str, after: float) -> list[float] | None:
    stamps = [first_line_after(s.log(), f"connected to master {new}", after) for s in ha.slaves]
    return stamps if all(stamps) else None


def false_deaths(leader: str) -> int:
    with contextlib.closing(grpc.insecure_channel(leader)) as ch:
        reply = host_service_pb2_grpc.HostServiceStub(ch).ListHosts(hs.ListHostsRequest(),
                                                                   timeout=5)
    return sum(1 for m in reply.host_metrics if not m.live)


def bench_failover(root: Path, runs: int) -> list[tuple[str, str, str, str]]:
    rows = []
    with HaPool(root / "failover", masters=3, slaves=2) as ha:
        for name, sig in (("SIGKILL", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
            creates, slaves, after_won, dead = [], [], [], 0
            for _ in range(runs):
                c, s, w, d = failover_trial(ha, sig)
                creates.append(c)
                slaves.append(s)
                after_won.append(w)
                dead += d
                time.sleep(0.5)
            rows.append((name, secs(creates), secs(slaves), secs(after_won, 3), str(dead)))
            print(f"  failover {name}: create {secs(creates)}, slaves {secs(slaves)} "
                  f"({secs(after_won, 3)} after the election), false deaths {dead}", flush=True)
    return rows


# -- durable CreateVM rate ---------------------------------------------------


async def rate_window(address: str, clients: int, seconds: float,
                      start_at: float | None = None) -> tuple[int, float]:
    """`clients` grpc.aio channels sending CreateVM back to back for `seconds`
    (from `start_at`, a CLOCK_MONOTONIC time, when given): (answers, seconds)."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    stubs = [vm_service_pb2_grpc.VMServiceStub(ch) for ch in channels]
    for stub in stubs:  # connected before the window opens
        await stub.CreateVM(vs.CreateVMRequest(name_label="w", memory=64 * MiB, vcpus=1),
                            timeout=5)
    done = 0
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    end = time.monotonic() + seconds

    async def loop(stub):
        nonlocal done
        while time.monotonic() < end:
            await stub.CreateVM(vs.CreateVMRequest(name_label="r", memory=64 * MiB, vcpus=1),
                                timeout=5)
            done += 1
    try:
        start = time.monotonic()
        await asyncio.gather(*(loop(stub) for stub in stubs))
        return done, time.monotonic() - start
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def rate_worker(address: str, clients: int, seconds: float, start_at: float) -> int:
    """One client process (`--rate-worker`): prints `answers seconds cpu`."""
    done, took = asyncio.run(rate_window(address, clients, seconds, start_at))
    print(done, took, time.process_time(), flush=True)
    return 0


class _Cpu:
    """CPU seconds of some processes over a window, in cores."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.before = self._now()
        self.t0 = time.monotonic()

    def _now(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in v) for k, v in self.pids.items()}

    def cores(self) -> dict[str, float]:
        after, took = self._now(), time.monotonic() - self.t0
        return {k: (after[k] - self.before[k]) / took for k in self.pids}


def one_window(address: str, clients: int, procs: int, seconds: float,
               parts: dict[str, list[int]]) -> tuple[float, dict[str, float]]:
    """CreateVM/s of `clients` over one window, and the cores each part used.
    procs 1: the clients in this process; n > 1: n client processes
    (`--rate-worker`), started and connected before the window opens."""
    if procs == 1:
        t0, cpu = time.process_time(), _Cpu(parts)
        done, took = asyncio.run(rate_window(address, clients, seconds))
        cores = cpu.cores()
        cores["clients"] = (time.process_time() - t0) / took
        return done / took, cores
    start_at = time.monotonic() + 1.5  # time to start and connect
    share = [clients // procs + (i < clients % procs) for i in range(procs)]
    workers = [subprocess.Popen(
        [sys.executable, __file__, "--rate-worker", address, str(n), str(seconds),
         str(start_at)], stdout=subprocess.PIPE, text=True) for n in share]
    try:
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu = _Cpu({**parts, "clients": [w.pid for w in workers]})
        time.sleep(seconds)
        cores = cpu.cores()  # before the workers exit (their CPU is gone after)
        outs = [[float(x) for x in w.communicate(timeout=seconds + 60)[0].split()]
                for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    return sum(o[0] for o in outs) / max(o[1] for o in outs), cores


# A master of this checkout, or of another (`tree`), with module constants set
# first: `python -c VARIANT_MASTER JSON ARGS...` (the variants of the rate rows).
VARIANT_MASTER = """
import importlib, json, sys
cfg = json.loads(sys.argv.pop(1))
if cfg.get("tree"):
    sys.path.insert(0, cfg["tree"])
for name, value in cfg.get("set", {}).items():
    module, _, attr = name.rpartition(".")
    setattr(importlib.import_module(module), attr, value)
from xcp_control.master.server import main
sys.argv[0] = "xcp-master"
sys.exit(main())
"""


@dataclasses.dataclass
class Variant:
    """Masters of one rate row: `tree` (another checkout's code, "" this one)
    and module constants to set (e.g. {"xcp_control.master.etcd_commits.LINGER": 0})."""

    name: str
    tree: str = ""
    set: dict = dataclasses.field(default_factory=dict)

    def launcher(self) -> list[str]:
        import json
        return [sys.executable, "-c", VARIANT_MASTER, json.dumps({"tree": self.tree,
                                                                  "set": self.set})]


class VariantPool(HaPool):
    """Three masters of one variant on a shared etcd, under their own prefix."""

    def __init__(self, root: Path, etcd, variant: Variant, index: int) -> None:
        super().__init__(root, masters=3, slaves=0)
        self.etcd, self.prefix, self.variant = etcd, f"/pool{index}", variant

    def new_master(self, i: int) -> MasterProcess:
        return MasterProcess(self.root / f"unused-{i}.db", extra_args=self.master_argv(),
                             log_dir=self.root, launcher=self.variant.launcher())

    def close(self) -> None:  # the shared etcd stays
        for master in self.masters:
            master.stop(timeout=3)


def bench_rate(root: Path, runs: int, seconds: float, client_procs: tuple[int, ...] = (1,),
               clients: int = 8, variants: tuple[Variant, ...] = (Variant("this"),),
               follower: bool = True, lone: bool = False,
               full_rows: int | None = None) -> list[tuple[str, str, str]]:
    """Rows: (name, rate, cores used by each part). Every variant's three
    masters run at once on one 3-member etcd (a prefix each) beside one SQLite
    master, and the rows take turns window by window (n rounds), so a load
    change on the shared machine falls on every row alike. client_procs: 1 =
    the clients in this process (grpc.aio), n > 1 = n client processes.
    lone: also one client alone per variant (its rate is 1 / its latency).
    full_rows: only the first that many variants get every kind of row (the
    others: the first of client_procs, to the leader)."""
    from tests.support.etcd import EtcdCluster

    def label(procs: int, n: int = clients) -> str:
        if n == 1:
            return "1 client alone"
        return f"{n} clients, " + ("1 process" if procs == 1 else f"{procs} processes")

    etcd = EtcdCluster(3, root / "rate-etcd").start()
    pools: list[VariantPool] = []
    sqlite = None
    try:
        rows: list[tuple[str, str, dict, int, int]] = []  # name, address, parts, procs, n
        for i, variant in enumerate(variants):
            full = full_rows is None or i < full_rows
            pool = VariantPool(root / f"rate-{i}", etcd, variant, i)
            pools.append(pool)
            pool.start()
            leader = pool.wait_leader()
            parts = {"leader": [pool.by_address(leader).pid],
                     "followers": [m.pid for m in pool.followers(leader)],
                     "etcd": [m.proc.pid for m in etcd.members]}
            for procs in client_procs if full else client_procs[:1]:
                rows.append((f"etcd, {variant.name}, to the leader, {label(procs)}", leader,
                             parts, procs, clients))
            if follower and full:
                rows.append((f"etcd, {variant.name}, through a follower, "
                             f"{label(client_procs[0])}",
                             pool.followers(leader)[0].address, parts, client_procs[0], clients))
            if lone and full:
                rows.append((f"etcd, {variant.name}, to the leader, {label(1, 1)}", leader,
                             parts, 1, 1))
        sqlite = MasterProcess(root / "rate-sqlite.db", log_dir=root).start()
        for procs in client_procs:
            rows.append((f"SQLite, one master, {label(procs)}", sqlite.address,
                         {"leader": [sqlite.pid]}, procs, clients))
        if lone:
            rows.append((f"SQLite, one master, {label(1, 1)}", sqlite.address,
                         {"leader": [sqlite.pid]}, 1, 1))
        results: dict[str, tuple[list[float], list[dict]]] = {r[0]: ([], []) for r in rows}
        for round_ in range(runs):
            for name, address, parts, procs, n in rows:
                rate, cores = one_window(address, n, procs, seconds, parts)
                results[name][0].append(rate)
                results[name][1].append(cores)
            print(f"  round {round_ + 1}: " + ", ".join(
                f"{results[n][0][-1]:.0f}" for n, *_ in rows), flush=True)
    finally:
        if sqlite is not None:
            sqlite.stop(timeout=3)
        for pool in pools:
            pool.close()
        etcd.close()
    out = []
    for name, (values, cpus) in results.items():
        cpu = ", ".join(f"{k} {statistics.median(c[k] for c in cpus):.2f}" for k in cpus[0])
        out.append((name, summarize(values).fmt(unit="/s", scale=1, digits=0), cpu))
        print(f"  rate {name}: {out[-1][1]}; cores: {cpu}", flush=True)
    return out


# -- 100,000 VMs ---------------------------------------------------------------


async def fill(urls: str, prefix: str, count: int) -> None:
    from xcp_control.master import etcd_client as ec
    client = ec.EtcdClient(urls)
    try:
        for start in range(0, count, 1000):
            ops = []
            for _ in range(min(1000, count - start)):
                vm = dm.VM(uuid=str(uuid_module.uuid4()), name_label="stored", memory=64 * MiB,
                           vcpus=1, power_state=dm.HALTED)
                ops.append(ec.put_op(f"{prefix}/o/vm/{vm.uuid}".encode(),
                                     vm.SerializeToString()))
            await client.txn([], ops, timeout=30)
    finally:
        await client.close()


def bench_big(root: Path, runs: int, count: int) -> tuple[str, str]:
    ha = HaPool(root / "big", masters=3, slaves=0)
    try:
        ha.etcd.start()
        asyncio.run(fill(ha.etcd.urls, ha.prefix, count))
        for i in range(3):
            ha.masters.append(ha.new_master(i).start(timeout=120))
        serving, total = [], []
        for _ in range(runs):
            leader = ha.wait_leader(timeout=60)
            index = next(i for i, m in enumerate(ha.masters) if m.address == leader)
            t0_wall, t0 = time.time(), time.monotonic()
            ha.masters[index].kill(signal.SIGKILL)
            others = ha.followers(leader)
            until(lambda: create_once(others[0].address), 30, interval=0.002)
            answered = time.time()
            total.append(time.monotonic() - t0)
            won = [first_line_after(m.stderr_text(), "won the election", t0_wall) for m in others]
            serving.append(answered - min(w for w in won if w))
            ha.masters[index] = MasterProcess(ha.root / f"unused-b{index}.db", listen=leader,
                                              extra_args=ha.master_argv(),
                                              log_dir=ha.root).start(timeout=120)
        print(f"  {count} VMs: election to serving {secs(serving, 3)}, kill to a CreateVM "
              f"answered {secs(total)}", flush=True)
        return secs(serving, 3), secs(total)
    finally:
        ha.close()


def parse_variant(spec: str, root: Path) -> Variant:
    """NAME[@COMMIT][;MODULE.CONST=JSON]... (see --variant)."""
    import json

    from benchmarks.common import archived_tree
    head, *sets = spec.split(";")
    name, _, commit = head.partition("@")
    tree = archived_tree(commit, root / f"tree-{commit}") if commit else ""
    values = {}
    for item in sets:
        key, _, value = item.partition("=")
        values[key.strip()] = json.loads(value)
    return Variant(name, tree, values)


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--rate-worker":  # one client process
        _, _, address, clients, seconds, start_at = sys.argv
        return rate_worker(address, int(clients), float(seconds), float(start_at))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few runs, small numbers")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--only", choices=("failover", "rate", "big"), action="append",
                   help="run only these parts (repeatable)")
    p.add_argument("--client-procs", default="1,8",
                   help="rate: client processes for the 8 clients, one row each (1: all "
                        "in this process)")
    p.add_argument("--variant", action="append", default=[], metavar="SPEC",
                   help="rate: masters of one row, NAME[@COMMIT][;MODULE.CONST=JSON]...: "
                        "another commit's code (git archive) and constants set before "
                        "main(); repeatable (default: this checkout as it is)")
    p.add_argument("--no-follower", action="store_true",
                   help="rate: no row through a follower")
    p.add_argument("--lone", action="store_true",
                   help="rate: also a row of one client alone per variant")
    p.add_argument("--full-rows", type=int, default=None, metavar="N",
                   help="rate: every kind of row for the first N variants only")
    a = p.parse_args()
    runs = 2 if a.quick else a.runs
    parts = set(a.only or ("failover", "rate", "big"))
    print(machine_line())
    print(load_note())
    root = Path(tempfile.mkdtemp(prefix="bench-ha-"))
    failover = bench_failover(root, runs) if "failover" in parts else []
    procs = tuple(int(x) for x in a.client_procs.split(","))
    variants = tuple(parse_variant(v, root) for v in a.variant) or (Variant("this"),)
    rate = (bench_rate(root, runs, 1.0 if a.quick else 2.0, procs, variants=variants,
                       follower=not a.no_follower, lone=a.lone, full_rows=a.full_rows)
            if "rate" in parts else [])
    big = bench_big(root, runs, 5_000 if a.quick else 100_000) if "big" in parts else None
    if failover:
        print("\n| failover | CreateVM to another master succeeds (s) | every slave streams "
              "to the new leader (s) | ... after its election (s) | false deaths |"
              "\n|---|---|---|---|---|")
        for row in failover:
            print("| " + " | ".join(row) + " |")
    if rate:
        print("\n| durable CreateVM, 8 clients | rate | cores used (median) |\n|---|---|---|")
        for row in rate:
            print("| " + " | ".join(row) + " |")
    if big:
        print(f"\nVMs stored: election to serving {big[0]}; kill to a CreateVM answered "
              f"{big[1]}")
    print(load_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
