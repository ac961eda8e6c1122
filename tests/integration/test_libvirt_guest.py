"""End to end with a real guest: xcp-master and an xcp-slave on --backend
libvirt, libvirtd and QEMU (TCG), the busybox guest of scripts/build-guest.

One scenario, in order (each guest boot costs 5-25 s under TCG on 2 cores):
CreateVM, StartVM (the QEMU process exists, the guest's init prints its
marker), PauseVM/UnpauseVM (libvirt agrees), RebootVM clean and hard (the
guest boots again), a clean ShutdownVM the guest
honours (ACPI), a guest that ignores ACPI is hard-stopped after the slave's
--shutdown-timeout, SIGKILL of the slave leaves QEMU running and the restarted
slave adopts the domain, a guest that powers itself off becomes HALTED in the
pool, DestroyVM, and StartVM without a kernel is INVALID_VALUE.
Run alone, under `flock /work/heavy.lock` when the machine is shared.
"""

from __future__ import annotations

import time

import grpc
import pytest

from tests.support.clients import channel, stubs
from tests.support.daemons import MasterProcess, SlaveProcess
from tests.support.libvirtd import ACPI_MARK, IGNORING_MARK, READY_MARK, LibvirtLab, \
    skip_unless_possible
from tests.support.processes import wait_until
from xcp.v1 import datamodel_pb2 as dm, host_service_pb2 as hs, vm_service_pb2 as vs
from xcp_control.errors import XcpError

pytestmark = pytest.mark.timeout(600)

MiB = 1024**2
BOOT_LIMIT = 90.0  # seconds a guest may take to reach init under TCG on a busy machine
SHUTDOWN_TIMEOUT = 6.0  # the slave's --shutdown-timeout in this test


@pytest.fixture(scope="module")
def lab():
    skip_unless_possible()
    lab = LibvirtLab().start()
    yield lab
    lab.stop()


@pytest.fixture
def pool(lab, tmp_path):
    master = MasterProcess(tmp_path / "pool.db", log_dir=tmp_path).start()
    slave = SlaveProcess(master.address, tmp_path / "kvm1", name="kvm1", log_dir=tmp_path,
                         extra_args=["--memory", "1G", *lab.slave_args(SHUTDOWN_TIMEOUT)])
    made: list[str] = []
    try:
        yield master, slave, made
    finally:
        lab.cleanup(made)
        slave.stop()
        master.stop()


def error_reason(exc: grpc.RpcError) -> str:
    err = XcpError.from_rpc_error(exc)
    return err.reason if err else exc.code().name


def test_real_guest_lifecycle_through_the_master(lab, pool):
    master, slave, made = pool
    slave.start()
    with channel(master.address) as ch:
        api = stubs(ch)
        live = lambda: api.hosts.GetHostMetrics(hs.GetHostMetricsRequest(uuid=slave.uuid)).live
        wait_until(lambda: _quietly(live), 20, what="the slave to be live")

        def create(name: str, args: str = "", kernel: bool = True) -> str:
            vm = api.vms.CreateVM(vs.CreateVMRequest(
                name_label=name, memory=128 * MiB, vcpus=1,
                pv_kernel=lab.kernel if kernel else "", pv_ramdisk=lab.initrd if kernel else "",
                pv_args=f"console=ttyS0 {args}".strip()))
            made.append(vm.uuid)
            return vm.uuid

        def state(vm: str) -> int:
            return api.vms.GetVM(vs.GetVMRequest(uuid=vm)).power_state

        def boot(vm: str) -> int:
            started = api.vms.StartVM(vs.StartVMRequest(uuid=vm), timeout=60)
            assert started.power_state == dm.RUNNING and started.resident_on == slave.uuid
            pid = lab.qemu_pid(vm)
            assert pid is not None, "no QEMU process for the running VM"
            wait_until(lambda: READY_MARK in lab.console(vm), BOOT_LIMIT,
                       what=f"guest {vm} to reach init")
            return pid

        # A kernel is what a libvirt guest boots: none is INVALID_VALUE.
        bare = create("no-kernel", kernel=False)
        with pytest.raises(grpc.RpcError) as caught:
            api.vms.StartVM(vs.StartVMRequest(uuid=bare), timeout=30)
        assert error_reason(caught.value) == "INVALID_VALUE"
        assert state(bare) == dm.HALTED

        # Boot, pause, unpause, clean shutdown honoured by the guest.
        plain = create("plain")
        assert api.vms.GetVM(vs.GetVMRequest(uuid=plain)).pv_kernel == lab.kernel
        pid = boot(plain)
        assert api.vms.PauseVM(vs.PauseVMRequest(uuid=plain)).power_state == dm.PAUSED
        assert lab.domain_state(plain) == 3  # VIR_DOMAIN_PAUSED
        assert api.vms.UnpauseVM(vs.UnpauseVMRequest(uuid=plain)).power_state == dm.RUNNING
        assert lab.domain_state(plain) == 1  # VIR_DOMAIN_RUNNING
        # Clean reboot: ACPI, the guest powers off, libvirt starts it again in
        # the same QEMU; hard reboot: a reset. Each boots the guest once more.
        for force, boots in ((False, 2), (True, 3)):
            rebooted = api.vms.RebootVM(vs.RebootVMRequest(uuid=plain, force=force), timeout=60)
            assert rebooted.power_state == dm.RUNNING
            wait_until(lambda: lab.console(plain).count(READY_MARK) >= boots, BOOT_LIMIT,
                       what=f"the guest to boot again (force={force})")
        assert lab.qemu_pid(plain) == pid
        begun = time.monotonic()
        halted = api.vms.ShutdownVM(vs.ShutdownVMRequest(uuid=plain), timeout=60)
        assert halted.power_state == dm.HALTED
        assert time.monotonic() - begun < SHUTDOWN_TIMEOUT, "the guest honoured it: no hard stop"
        assert ACPI_MARK in lab.console(plain)
        wait_until(lambda: lab.qemu_pid(plain) is None, 10, what="QEMU to exit")
        assert not _pid_alive(pid)

        # A guest that ignores ACPI; SIGKILL the slave under it, restart, adopt.
        stubborn = create("stubborn", "xcp.ignore_acpi")
        pid = boot(stubborn)
        assert IGNORING_MARK in lab.console(stubborn)
        slave.kill()
        assert _pid_alive(pid) and lab.qemu_pid(stubborn) == pid, "QEMU died with the slave"
        slave.start()
        wait_until(lambda: _quietly(live), 20, what="the restarted slave to be live")
        time.sleep(2)  # a few beats: a slave that had not adopted it would report it gone
        assert state(stubborn) == dm.RUNNING
        begun = time.monotonic()
        halted = api.vms.ShutdownVM(vs.ShutdownVMRequest(uuid=stubborn), timeout=60)
        took = time.monotonic() - begun
        assert halted.power_state == dm.HALTED
        assert SHUTDOWN_TIMEOUT - 0.5 <= took < SHUTDOWN_TIMEOUT + 15, took
        assert ACPI_MARK not in lab.console(stubborn)
        wait_until(lambda: lab.qemu_pid(stubborn) is None, 10, what="QEMU to be hard-stopped")

        # A guest that powers itself off: HALTED in the pool with the next report.
        quitter = create("quitter", "xcp.poweroff_after=2")
        boot(quitter)
        wait_until(lambda: state(quitter) == dm.HALTED, 30, what="the pool to see it halted")
        assert api.vms.GetVM(vs.GetVMRequest(uuid=quitter)).resident_on == ""
        assert lab.qemu_pid(quitter) is None

        for vm in (bare, plain, stubborn, quitter):
            api.vms.DestroyVM(vs.DestroyVMRequest(uuid=vm))
        assert not api.vms.ListVMs(vs.ListVMsRequest()).vms
        assert all(lab.domain_state(vm) is None for vm in made)


def _quietly(predicate) -> bool:
    try:
        return bool(predicate())
    except grpc.RpcError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_libvirtd_restart_is_survived(lab, pool):
    """libvirtd goes away under a running guest: QEMU keeps running, domain
    calls fail with HYPERVISOR_UNAVAILABLE, the pool keeps the VM RUNNING
    (reports carry the last list, flagged), also across a slave restart
    meanwhile, and once libvirtd is back the slave re-opens its connection,
    adopts the domain and drives it again."""
    if not lab.owns_libvirtd:
        pytest.skip("libvirtd was started outside this test run: not restarting it")
    master, slave, made = pool
    slave.start()
    with channel(master.address) as ch:
        api = stubs(ch)
        live = lambda: api.hosts.GetHostMetrics(hs.GetHostMetricsRequest(uuid=slave.uuid)).live
        wait_until(lambda: _quietly(live), 20, what="the slave to be live")
        vm = api.vms.CreateVM(vs.CreateVMRequest(
            name_label="survivor", memory=128 * MiB, vcpus=1, pv_kernel=lab.kernel,
            pv_ramdisk=lab.initrd, pv_args="console=ttyS0")).uuid
        made.append(vm)
        api.vms.StartVM(vs.StartVMRequest(uuid=vm), timeout=60)
        pid = lab.qemu_pid(vm)
        lab.stop_libvirtd()
        try:
            assert _pid_alive(pid)
            with pytest.raises(grpc.RpcError) as caught:
                api.vms.PauseVM(vs.PauseVMRequest(uuid=vm), timeout=30)
            assert error_reason(caught.value) == "HYPERVISOR_UNAVAILABLE"
            assert "HYPERVISOR_UNAVAILABLE" in error_reason_or_ok(
                lambda: api.vms.PauseVM(vs.PauseVMRequest(uuid=vm), timeout=30))
            time.sleep(2)  # a few reports while libvirt is down
            assert api.vms.GetVM(vs.GetVMRequest(uuid=vm)).power_state == dm.RUNNING
            # A slave restarted now has never seen its domains: its reports say
            # the hypervisor is unavailable, and the master keeps the VM RUNNING.
            slave.kill()
            slave.start()
            wait_until(lambda: _quietly(live), 20, what="the restarted slave to be live")
            time.sleep(2)
            assert api.vms.GetVM(vs.GetVMRequest(uuid=vm)).power_state == dm.RUNNING
            assert _pid_alive(pid)
        finally:
            lab.start_libvirtd()
        paused = wait_until(lambda: error_reason_or_ok(
            lambda: api.vms.PauseVM(vs.PauseVMRequest(uuid=vm), timeout=30)) == "OK",
            30, interval=0.5, what="the slave to drive the domain again")
        assert paused and lab.domain_state(vm) == 3  # VIR_DOMAIN_PAUSED: the same domain
        assert lab.qemu_pid(vm) == pid
        halted = api.vms.ShutdownVM(vs.ShutdownVMRequest(uuid=vm, force=True), timeout=30)
        assert halted.power_state == dm.HALTED
        api.vms.DestroyVM(vs.DestroyVMRequest(uuid=vm))
        wait_until(lambda: lab.qemu_pid(vm) is None, 10, what="QEMU to exit")


def error_reason_or_ok(call) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return error_reason(exc)
    return "OK"
