#!/usr/bin/env python3
"""HA restart (issue 12): time from SIGSTOP of a host until its RESTART VMs
are RUNNING on other hosts, with 1 and with 20 protected VMs on it.

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_ha_restart.py   # BENCHMARKS.md
    .venv/bin/python benchmarks/bench_ha_restart.py --trials 2               # smoke run

Real processes on loopback, on the fault tests' harness (tests/support/lab.py):
per trial a fresh master (heartbeat interval 0.5 s, dead_after 1.5 s) and
three slaves with --fence-after 4 (as in tests/fault/test_ha_restart_faults.py;
the default is 10 s), HA enabled, the VMs started on one host, which is then
SIGSTOPped; the master is polled (GetVM, every 20 ms) until every VM is RUNNING
elsewhere. The stopped host is SIGCONTed and checked to have fenced (no
domains left). Target: <= fence_after + 2 s. Every figure: median (min-max, n).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_note, machine_line, summarize  # noqa: E402
from tests.support.lab import Lab  # noqa: E402
from xcp.v1 import datamodel_pb2 as dm, pool_service_pb2 as ps  # noqa: E402
from xcp.v1 import pool_service_pb2_grpc, vm_service_pb2 as vs  # noqa: E402

FENCE_AFTER = 4.0
SETTINGS = dict(heartbeat_interval=0.5, dead_after=1.5, contact_timeout=1.0)
GiB = 1 << 30


def trial(lab: Lab, vms: int) -> float:
    master = lab.start_master(**SETTINGS)
    try:
        pool_service_pb2_grpc.PoolServiceStub(master.client.channel).SetHaConfig(
            ps.SetHaConfigRequest(enabled=True), timeout=5)
        with lab.case() as case:
            a, *_ = [case.slave(master, "--fence-after", str(FENCE_AFTER)) for _ in range(3)]
            uuids = []
            for i in range(vms):
                vm = master.client.vms.CreateVM(vs.CreateVMRequest(
                    name_label=f"p{i}", memory=GiB, vcpus=1, ha_restart_priority=dm.RESTART,
                    ha_restart_order=i), timeout=5).uuid
                master.client.vms.StartVM(vs.StartVMRequest(uuid=vm, host=a.uuid), timeout=10)
                uuids.append(vm)
            time.sleep(0.5)
            a.freeze()
            stopped = time.monotonic()
            try:
                deadline = stopped + 30
                while time.monotonic() < deadline:
                    states = [master.client.vm(u) for u in uuids]
                    if all(v.power_state == dm.RUNNING and v.resident_on != a.uuid
                           for v in states):
                        break
                    time.sleep(0.02)
                else:
                    raise RuntimeError("the VMs were not restarted within 30 s")
                took = time.monotonic() - stopped
            finally:
                a.thaw()
            if a.domains():
                raise RuntimeError("the stopped host kept a domain after SIGCONT")
            return took
    finally:
        master.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--vms", default="1,20", help="protected VMs per case (default 1,20)")
    args = parser.parse_args()
    print(machine_line())
    print(load_note())
    with tempfile.TemporaryDirectory(prefix="bench-ha-restart-") as tmp:
        lab = Lab(Path(tmp))
        try:
            for vms in (int(v) for v in args.vms.split(",")):
                times = [trial(lab, vms) for _ in range(args.trials)]
                print(f"{vms:>2} RESTART VMs: SIGSTOP -> all RUNNING elsewhere "
                      f"{summarize(times).fmt(unit='s', scale=1, digits=2)} "
                      f"(fence_after {FENCE_AFTER:g} s, target <= {FENCE_AFTER + 2:g} s)",
                      flush=True)
        finally:
            lab.close()
    print(load_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
