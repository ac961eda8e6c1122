"""Lifecycle latencies through the master with the libvirt backend (real QEMU
guests, TCG) beside the simulated backend, in one run (issue 13).

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_libvirt.py [--rounds 5]

One xcp-master, two xcp-slaves: `sim` (simulated backend, its default
operation times) and `kvm1` (--backend libvirt on qemu:///system,
--libvirt-domain-type qemu). Each round, on each slave, one VM of 128 MiB and
1 vCPU (the busybox guest of scripts/build-guest): StartVM (the call's
latency; for libvirt also StartVM to the guest's init marker on the serial
console), `--pauses` PauseVM/UnpauseVM pairs, a clean ShutdownVM the guest
honours (ACPI), DestroyVM. Also the QEMU process's RSS once the guest runs.
Times on CLOCK_MONOTONIC in this process; gRPC calls from one sync client.
libvirtd is started by the harness (tests/support/libvirtd.py) if none runs.
Every VM, domain and process is removed on the way out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from benchmarks import common  # noqa: E402
from tests.support.libvirtd import INIT_MARK, LibvirtLab  # noqa: E402
from xcp.v1 import host_service_pb2 as hs, vm_service_pb2 as vs  # noqa: E402
from xcp.v1 import host_service_pb2_grpc, vm_service_pb2_grpc  # noqa: E402

MiB = 1024**2
BOOT_LIMIT = 120.0


def wait_for(predicate, limit: float, what: str) -> float:
    """Poll (10 ms) until true; the monotonic time it became true."""
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return time.monotonic()


def timed(call, *args, **kwargs) -> float:
    begun = time.monotonic()
    call(*args, **kwargs)
    return time.monotonic() - begun


def rss_of(pid: int | None) -> int | None:
    return common.rss_bytes(pid) if pid else None


def one_round(vms, host: str, lab: LibvirtLab, real: bool, pauses: int, made: list[str],
              samples: dict[str, list[float]], rss: list[int]) -> None:
    vm = vms.CreateVM(vs.CreateVMRequest(
        name_label=f"bench-{len(made)}", memory=128 * MiB, vcpus=1, pv_kernel=lab.kernel,
        pv_ramdisk=lab.initrd, pv_args="console=ttyS0")).uuid
    made.append(vm)
    begun = time.monotonic()
    vms.StartVM(vs.StartVMRequest(uuid=vm, host=host), timeout=90)
    samples["StartVM (call)"].append(time.monotonic() - begun)
    if real:
        at_init = wait_for(lambda: INIT_MARK in lab.console(vm), BOOT_LIMIT, "the guest")
        samples["StartVM to guest at init"].append(at_init - begun)
        rss.append(rss_of(lab.qemu_pid(vm)) or 0)
    for _ in range(pauses):
        samples["PauseVM"].append(timed(vms.PauseVM, vs.PauseVMRequest(uuid=vm), timeout=30))
        samples["UnpauseVM"].append(timed(vms.UnpauseVM, vs.UnpauseVMRequest(uuid=vm),
                                          timeout=30))
    samples["ShutdownVM (clean)"].append(
        timed(vms.ShutdownVM, vs.ShutdownVMRequest(uuid=vm), timeout=90))
    vms.DestroyVM(vs.DestroyVMRequest(uuid=vm))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="VMs per backend (default 5)")
    parser.add_argument("--pauses", type=int, default=5,
                        help="PauseVM/UnpauseVM pairs per VM (default 5)")
    args = parser.parse_args()
    common.install_sigterm_handler()
    print(common.machine_line())
    print("load before:", common.load_note())
    work = common.work_dir("bench-libvirt")
    lab = LibvirtLab().start()
    master = sim = real = None
    made: list[str] = []
    try:
        master = common.Master(work / "pool.db")
        sim = common.Slave(master.address, work / "sim", name="sim")
        real = common.Slave(master.address, work / "kvm1", name="kvm1",
                            extra=["--memory", "2G", *lab.slave_args(shutdown_timeout=50)])
        with grpc.insecure_channel(master.address) as ch:
            vms = vm_service_pb2_grpc.VMServiceStub(ch)
            hosts = host_service_pb2_grpc.HostServiceStub(ch)
            for slave in (sim, real):
                wait_for(lambda: _live(hosts, slave.uuid), 30, f"{slave.uuid} to be live")
            results = {}
            for name, slave, is_real in (("simulated", sim, False), ("libvirt (TCG)", real, True)):
                samples: dict[str, list[float]] = {k: [] for k in (
                    "StartVM (call)", "StartVM to guest at init", "PauseVM", "UnpauseVM",
                    "ShutdownVM (clean)")}
                rss: list[int] = []
                for _ in range(args.rounds):
                    one_round(vms, slave.uuid, lab, is_real, args.pauses, made, samples, rss)
                results[name] = (samples, rss)
        report(results)
    finally:
        lab.cleanup(made)
        for proc in (real, sim, master):
            if proc is not None:
                proc.stop()
        lab.stop()
    print("load after:", common.load_note())
    return 0


def _live(hosts, uuid: str) -> bool:
    try:
        return hosts.GetHostMetrics(hs.GetHostMetricsRequest(uuid=uuid)).live
    except grpc.RpcError:
        return False


def report(results) -> None:
    names = list(results)
    keys = list(next(iter(results.values()))[0])
    rows = []
    for key in keys:
        row = [key]
        for name in names:
            values = results[name][0][key]
            row.append(common.summarize(values).fmt() if values else "-")
        rows.append(row)
    print(common.table(rows, ["median (min-max, n)", *names]))
    rss = [r for r in results[names[-1]][1] if r]
    if rss:
        s = common.summarize(rss)
        print(f"QEMU RSS per 128 MiB guest at init: {s.median / MiB:.0f} MiB "
              f"({s.low / MiB:.0f}-{s.high / MiB:.0f}, n={s.n})")


if __name__ == "__main__":
    sys.exit(main())
