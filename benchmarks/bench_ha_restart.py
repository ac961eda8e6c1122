#!/usr/bin/env python3
"""HA restart (issue 12): time from a fault of a host (SIGSTOP, or a netns
partition) until its RESTART VMs are RUNNING on other hosts, with 1 and with 20
protected VMs on it, and where that time goes.

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_ha_restart.py   # BENCHMARKS.md
    flock /work/heavy.lock .venv/bin/python benchmarks/bench_ha_restart.py \\
        --faults stop --masters sequential=2c3e2fe^,main=704d833,this    # A/B/C in one run
    .venv/bin/python benchmarks/bench_ha_restart.py --trials 2 --faults stop  # smoke run

Real processes on the fault tests' harness (tests/support/lab.py): per trial a
fresh master (heartbeat interval 0.5 s, dead_after 1.5 s) and three slaves with
--fence-after 4 (as in tests/fault/test_ha_restart_faults.py; the default is
10 s), HA enabled, the VMs started on host A, then the fault:
- stop: A is SIGSTOPped (SIGCONT after), everything on loopback;
- partition: A runs inside a network namespace (tests/support/netns.py) and
  every packet to and from it is dropped (nftables; healed after); the master
  and the two other slaves listen on the root side of its veth. Needs root.
One second after the last restart every VM must still run elsewhere (counted:
"still RUNNING"); after the fault is undone, A is checked to have fenced (no
domain left).

Times are CLOCK_MONOTONIC in this process, stamped when events arrive on two
Watch streams (as a client sees the change, after it committed): the fault,
A's live=false (`lost`), the one commit that sets A's VMs HALTED (`failed`:
the leader judged A fenced), then each VM RUNNING on another host; `total` is
the fault to the last of them. Target: total <= fence_after + 2 s.

`--masters`: the master's code, per variant: `this` (this checkout) or
NAME=COMMIT (that commit's xcp_control, `git archive`d into a scratch dir and
run by benchmarks/common.TREE_MASTER; slaves are always this checkout's).
Variants alternate trial by trial, so drift in the machine's load hits all.
Every figure: median (min-max, n). Every process, namespace and nftables
table is removed on the way out, failure or not.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

from benchmarks.common import (TREE_MASTER, archived_tree, install_sigterm_handler,  # noqa: E402
                               load_note, machine_line, summarize)
from tests.support.lab import Lab  # noqa: E402
from tests.support.processes import wait_until  # noqa: E402
from xcp.v1 import datamodel_pb2 as dm, pool_service_pb2 as ps  # noqa: E402
from xcp.v1 import event_service_pb2 as ev, event_service_pb2_grpc  # noqa: E402
from xcp.v1 import pool_service_pb2_grpc, vm_service_pb2 as vs  # noqa: E402

FENCE_AFTER = 4.0
SETTINGS = dict(heartbeat_interval=0.5, dead_after=1.5, contact_timeout=1.0)
GiB = 1 << 30
RESTART_LIMIT = 30.0  # seconds: a trial whose VMs are not back by then fails
STAY = 1.0  # seconds after the restart: the VMs must still run then
PHASES = ("lost", "failed", "first", "total")


@dataclass
class VmWatch:
    """Every VM event of one master, with its arrival time (monotonic)."""

    address: str
    events: list[tuple[float, dm.VM]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._channel = grpc.insecure_channel(self.address)
        stub = event_service_pb2_grpc.EventServiceStub(self._channel)
        self._call = stub.Watch(ev.WatchRequest(classes=["vm"]), timeout=300)
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._synced.wait(10):
            self.close()
            raise RuntimeError("no SYNC on the VM Watch stream within 10 s")

    def _run(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in self._call:
                if event.op == ev.SYNC:
                    self._synced.set()
                elif event.class_name == "vm":
                    with self._lock:
                        self.events.append((time.monotonic(), event.vm))

    def since(self, t0: float) -> list[tuple[float, dm.VM]]:
        with self._lock:
            return [(t, vm) for t, vm in self.events if t >= t0]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


def phases(watch: VmWatch, lost: float, fault: float, failed_host: str,
           uuids: set[str]) -> dict[str, float] | None:
    """The phase times of one trial from its VM events, None until every VM
    runs elsewhere."""
    halted_at = running_at = None
    running: dict[str, float] = {}
    for at, vm in watch.since(fault):
        if vm.uuid not in uuids:
            continue
        if vm.power_state == dm.HALTED and halted_at is None:
            halted_at = at
        if vm.power_state == dm.RUNNING and vm.resident_on != failed_host:
            running.setdefault(vm.uuid, at)
    if len(running) < len(uuids) or halted_at is None:
        return None
    running_at = max(running.values())
    return {"lost": lost - fault, "failed": halted_at - fault,
            "first": min(running.values()) - fault, "total": running_at - fault}


def start_vms(master, host: str, count: int) -> list[str]:
    """One at a time: concurrent starts on one host can race a domain report
    (BENCHMARKS.md, HA restart: a report built before a boot ended, reconciled
    after the start committed, halts the VM); the setup must not measure that."""
    vms = master.client.vms
    uuids = []
    for i in range(count):
        uuid = vms.CreateVM(vs.CreateVMRequest(
            name_label=f"p{i}", memory=GiB, vcpus=1, ha_restart_priority=dm.RESTART,
            ha_restart_order=i), timeout=5).uuid
        vms.StartVM(vs.StartVMRequest(uuid=uuid, host=host), timeout=10)
        uuids.append(uuid)
    return uuids


def still_running(master, failed_host: str, uuids: list[str]) -> int:
    """How many of the restarted VMs still run elsewhere a second later (a
    restart undone by reconciliation would show here)."""
    time.sleep(STAY)
    return sum(1 for u in uuids if (v := master.client.vm(u)).power_state == dm.RUNNING
               and v.resident_on != failed_host)


def trial(lab: Lab, vms: int, fault: str, launcher: tuple[str, ...]) -> dict[str, float]:
    master = lab.start_master(launcher=launcher, **SETTINGS)
    watch = None
    try:
        pool_service_pb2_grpc.PoolServiceStub(master.client.channel).SetHaConfig(
            ps.SetHaConfigRequest(enabled=True), timeout=5)
        with lab.case() as case:
            # The slaves' first stream built for the master's 0.5 s interval
            # (README: xcp-slave --heartbeat-interval), as in the fault tests.
            args = ("--fence-after", str(FENCE_AFTER), "--heartbeat-interval", "0.5")
            a = case.slave(master, *args)  # inside the test host for a partition
            for _ in range(2):
                case.slave(master, *args, outside=True)
            uuids = start_vms(master, a.uuid, vms)
            watch = VmWatch(master.address)
            time.sleep(0.5)
            undo = a.thaw if fault == "stop" else lab.host.heal
            if fault == "stop":
                a.freeze()
            else:
                lab.host.partition()
            at = time.monotonic()
            try:
                lost = master.watcher.wait_flip(a.uuid, False, at, timeout=10).at
                got = wait_until(lambda: phases(watch, lost, at, a.uuid, set(uuids)),
                                 RESTART_LIMIT, "every VM RUNNING on another host",
                                 interval=0.02)
                got["kept"] = still_running(master, a.uuid, uuids)
            finally:
                undo()
            # The host came back empty: it fenced (a connection from before a
            # heal may be reset once, so ask until answered).
            wait_until(lambda: _domains_or_none(a) == {}, 10,
                       "the failed host fenced (no domain left)", interval=0.1)
            return got
    finally:
        if watch is not None:
            watch.close()
        master.close()


def _domains_or_none(slave):
    try:
        return slave.domains(timeout=1)
    except grpc.RpcError:
        return None


def checkout(name: str, commit: str, scratch: Path) -> tuple[str, ...]:
    """The launcher that runs that commit's master (common.archived_tree)."""
    return (sys.executable, "-c", TREE_MASTER, archived_tree(commit, scratch / name))


def report(label: str, vms: int, fault: str, runs: list[dict[str, float]]) -> str:
    cells = [f"{p} {summarize([r[p] for r in runs]).fmt(unit='s', scale=1, digits=2)}"
             for p in PHASES]
    what = "SIGSTOP" if fault == "stop" else "partition"
    kept = sum(r["kept"] for r in runs)
    return (f"{what:>9} {vms:>2} VMs [{label}]: " + "; ".join(cells)
            + f"; still RUNNING {STAY:g} s later: {kept} of {vms * len(runs)}"
            + f"  (target total <= {FENCE_AFTER + 2:g} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--vms", default="1,20", help="protected VMs per case (default 1,20)")
    parser.add_argument("--faults", default="stop,partition",
                        help="stop, partition (root: a network namespace)")
    parser.add_argument("--masters", default="this",
                        help="comma-separated: this, or NAME=COMMIT (another commit's master)")
    args = parser.parse_args()
    if not 1 <= args.trials <= 50:
        parser.error("trials 1..50")
    faults = args.faults.split(",")
    install_sigterm_handler()  # a SIGTERM still removes the processes and the namespace
    print(machine_line())
    print(load_note(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ha-restart-") as tmp:
        scratch = Path(tmp)
        masters = []
        for spec in args.masters.split(","):
            name, _, commit = spec.partition("=")
            masters.append((name, checkout(name, commit, scratch) if commit else ()))
        for fault in faults:
            for vms in (int(v) for v in args.vms.split(",")):
                results = run_case(scratch / f"{fault}-{vms}", fault, vms, masters, args.trials)
                for name, _ in masters:
                    print(report(name, vms, fault, results[name]), flush=True)
    print(load_note())
    return 0


def run_case(tmp: Path, fault: str, vms: int, masters, trials: int) -> dict[str, list]:
    """`trials` trials per master variant, alternating, on one lab (a test host
    for the partition: created once, destroyed whatever happens)."""
    tmp.mkdir()
    results: dict[str, list] = {name: [] for name, _ in masters}
    with contextlib.ExitStack() as stack:
        host = None
        if fault == "partition":
            from tests.support.netns import TestHost
            host = stack.enter_context(TestHost())
        lab = Lab(tmp, host)
        stack.callback(lab.close)
        for i in range(trials):
            for name, launcher in masters:
                results[name].append(trial(lab, vms, fault, launcher))
                print(f"  {fault} {vms} VMs [{name}] trial {i + 1}: "
                      + ", ".join(f"{p} {results[name][-1][p]:.2f}" for p in PHASES)
                      + f", kept {results[name][-1]['kept']}",
                      flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
