"""Faults of the leader among several masters on etcd, for real: SIGKILL in
the middle of a burst of CreateVM (nothing acknowledged is lost), SIGSTOP
past its lease then SIGCONT (it changes nothing: its writes and its slave
commands are refused)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import uuid as uuid_module

import grpc
import pytest

from tests.support import etcd as etcd_support
from tests.support.ha import HaPool, get_pool
from tests.support.clients import channel, stubs
from tests.support.daemons import MasterProcess
from tests.support.processes import free_port, wait_until
from xcp_control.errors import error_info
from xcp.v1 import slave_service_pb2 as sl, slave_service_pb2_grpc, vm_service_pb2 as vs

pytestmark = pytest.mark.skipif(not etcd_support.available(), reason="etcd is not installed")

MiB = 1024 * 1024


def reason(exc: grpc.RpcError) -> str:
    info = error_info(exc)
    return info.reason if info else exc.code().name


class Burst:
    """Clients creating VMs through any master, moving on when one fails;
    `acked` holds every VM a master acknowledged."""

    def __init__(self, addresses: list[str], clients: int = 4, limit: int = 400,
                 seconds: float = 30.0) -> None:
        self.addresses, self.limit = addresses, limit
        self.deadline = time.monotonic() + seconds
        self.acked: list[str] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> "Burst":
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, offset: int) -> None:
        channels = [grpc.insecure_channel(a) for a in self.addresses]
        current = offset % len(channels)
        try:
            while len(self.acked) < self.limit and time.monotonic() < self.deadline:
                stub = stubs(channels[current])
                try:
                    vm = stub.vms.CreateVM(vs.CreateVMRequest(
                        name_label="burst", memory=64 * MiB, vcpus=1), timeout=2)
                except grpc.RpcError:
                    with self._lock:
                        self.failures += 1
                    current = (current + 1) % len(channels)
                    time.sleep(0.02)
                    continue
                with self._lock:
                    self.acked.append(vm.uuid)
        finally:
            for ch in channels:
                ch.close()


def test_sigkill_of_the_leader_mid_burst_loses_no_acknowledged_vm(tmp_path):
    with HaPool(tmp_path, masters=3, slaves=1) as ha:
        leader = ha.wait_leader()
        burst = Burst([m.address for m in ha.masters]).start()
        wait_until(lambda: len(burst.acked) >= 60, 20, what="the burst to get going")
        ha.by_address(leader).kill(signal.SIGKILL)
        burst.join()
        assert len(burst.acked) >= 200, f"only {len(burst.acked)} after the failover"
        new_leader = ha.wait_leader(exclude=(leader,))
        assert new_leader != leader
        for master in ha.followers(""):  # every surviving master, leader or not
            with channel(master.address) as ch:
                listed = {vm.uuid for vm in stubs(ch).vms.ListVMs(
                    vs.ListVMsRequest(), timeout=10).vms}
            missing = set(burst.acked) - listed
            assert not missing, f"{len(missing)} acknowledged VMs lost on {master.address}"


def test_a_leader_stopped_past_its_lease_changes_nothing_when_resumed(tmp_path):
    with HaPool(tmp_path, masters=3, slaves=2) as ha:
        old = ha.wait_leader()
        old_epoch = get_pool(old).epoch
        stale = ha.by_address(old)
        with channel(old) as ch:
            vm = stubs(ch).vms.CreateVM(vs.CreateVMRequest(
                name_label="before", memory=64 * MiB, vcpus=1), timeout=5)
        stale.kill(signal.SIGSTOP)
        try:
            new = ha.wait_leader(exclude=(old,))
            new_epoch = get_pool(new).epoch
            assert new_epoch > old_epoch
            # Every slave moves to the new leader and learns its epoch: called
            # over by it (FollowLeader), not left to its keepalive on the old one.
            for slave in ha.slaves:
                wait_until(lambda s=slave: f"connected to master {new}" in s.log(), 15,
                           what=f"{slave.name} to stream to the new leader")
                assert f"leader {new} called" in slave.log()
            # Calls that reach the stopped leader wait in its socket...
            results: dict[str, object] = {}

            def call(name, fn):
                try:
                    results[name] = fn()
                except grpc.RpcError as exc:
                    results[name] = exc

            # (no ready wait: a stopped process never finishes the HTTP/2 handshake)
            with contextlib.closing(grpc.insecure_channel(old)) as ch:
                s = stubs(ch)
                waiting = [
                    threading.Thread(target=call, args=("create", lambda: s.vms.CreateVM(
                        vs.CreateVMRequest(name_label="from-the-past", memory=64 * MiB,
                                           vcpus=1), timeout=15))),
                    threading.Thread(target=call, args=("start", lambda: s.vms.StartVM(
                        vs.StartVMRequest(uuid=vm.uuid), timeout=15)))]
                for thread in waiting:
                    thread.start()
                time.sleep(0.5)
                # ...and are answered once it resumes: refused, or passed on
                # to the new leader, never acted on by the deposed one.
                stale.kill(signal.SIGCONT)
                for thread in waiting:
                    thread.join(timeout=20)
            for name, result in results.items():
                if isinstance(result, grpc.RpcError):
                    assert reason(result) == "HOST_IS_SLAVE", (name, result)
            assert "stopped acting as leader" in stale.stderr_text()
            # The slaves refuse the old epoch outright: the last layer of fencing.
            target = ha.slaves[0].address
            with channel(target) as ch:
                slave = slave_service_pb2_grpc.SlaveServiceStub(ch)
                request = sl.DestroyDomainRequest(vm_uuid=str(uuid_module.uuid4()))
                with pytest.raises(grpc.RpcError) as refused:
                    slave.DestroyDomain(request, timeout=5,
                                        metadata=(("xcp-epoch", str(old_epoch)),))
                assert reason(refused.value) == "STALE_MASTER"
                assert dict(error_info(refused.value).metadata) == {
                    "epoch": str(old_epoch), "seen": str(new_epoch)}
                slave.ListDomains(sl.ListDomainsRequest(), timeout=5,
                                  metadata=(("xcp-epoch", str(old_epoch)),))  # read-only
                # Nor can the old leader call the slave back to itself.
                with pytest.raises(grpc.RpcError) as recalled:
                    slave.FollowLeader(sl.FollowLeaderRequest(epoch=old_epoch, leader=old),
                                       timeout=5, metadata=(("xcp-epoch", str(old_epoch)),))
                assert reason(recalled.value) == "STALE_MASTER"
            # The resumed master follows the new leader and passes calls on.
            wait_until(lambda: (p := get_pool(old)) is not None and p.master == new, 10,
                       what="the resumed master to follow the new leader")
            with channel(old) as ch:
                assert stubs(ch).vms.CreateVM(vs.CreateVMRequest(
                    name_label="after", memory=64 * MiB, vcpus=1), timeout=5).uuid
        finally:
            stale.kill(signal.SIGCONT)


class _MasterInNamespace(MasterProcess):
    """An xcp-master run inside a test host's network namespace."""

    def __init__(self, host, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exec_prefix = host.exec_argv


def test_a_leader_partitioned_from_etcd_and_the_slaves_steps_down(tmp_path):
    from tests.support.daemons import SlaveProcess
    from tests.support.etcd import EtcdCluster
    from tests.support.netns import TestHost, require_test_hosts

    require_test_hosts()
    with TestHost() as host, EtcdCluster(1, tmp_path, client_host=host.root_ip) as etcd:
        common = ["--etcd", etcd.urls, "--etcd-prefix", "/pool", "--lease-ttl", "2"]
        masters, slaves = [], []
        try:
            # The leader runs in the test host, reached at its own address.
            port = _free_port_in(host)
            a = f"{host.host_ip}:{port}"
            cut = _MasterInNamespace(host, tmp_path / "a.db", listen=f"0.0.0.0:{port}",
                                     extra_args=[*common, "--advertise", a], log_dir=tmp_path)
            masters.append(cut.start())
            wait_until(lambda: (p := get_pool(a)) and p.master, 15,
                       what="the test host's master to lead")
            for name in ("b", "c"):
                port = free_port()
                masters.append(MasterProcess(
                    tmp_path / f"{name}.db", listen=f"0.0.0.0:{port}", log_dir=tmp_path,
                    extra_args=[*common, "--advertise", f"{host.root_ip}:{port}"]).start())
            others = [m.extra_args[-1] for m in masters[1:]]
            assert get_pool(others[0]).master == a
            everyone = ",".join([a, *others])
            for i in range(2):
                slaves.append(SlaveProcess(everyone, tmp_path / f"s{i}", name=f"host{i + 1}",
                                           log_dir=tmp_path).start())
            for slave in slaves:
                wait_until(lambda s=slave: f"connected to master {a}" in s.log(), 15,
                           what=f"{slave.name} to stream to the test host's master")
            host.partition()
            cut_at = time.monotonic()
            new = wait_until(lambda: (p := get_pool(others[0])) and p.master in others
                             and p.master, 15, what="a new leader outside the test host")
            elapsed = time.monotonic() - cut_at
            assert elapsed < 6, f"new leader after {elapsed:.1f}s"
            for slave in slaves:
                wait_until(lambda s=slave: f"connected to master {new}" in s.log(), 15,
                           what=f"{slave.name} to stream to the new leader")
            # The cut-off leader stopped acting on its own, before etcd let
            # another win: it wrote nothing and commanded no slave since.
            wait_until(lambda: "stopped acting as leader" in cut.stderr_text(), 5,
                       what="the partitioned leader to step down")
            with channel(new) as ch:
                assert stubs(ch).vms.CreateVM(vs.CreateVMRequest(
                    name_label="after-the-cut", memory=64 * MiB, vcpus=1), timeout=5).uuid
            host.heal()
            wait_until(lambda: (p := get_pool(a)) is not None and p.master == new, 20,
                       what="the healed master to follow the new leader")
        finally:
            host.heal()
            for slave in slaves:
                slave.stop()
            for master in masters:
                master.stop(timeout=3)


def _free_port_in(host) -> int:
    """A TCP port free inside the test host (bound there and released)."""
    out = host.check_output([sys.executable, "-c", "import socket; s=socket.socket(); "
                             "s.bind(('0.0.0.0', 0)); print(s.getsockname()[1])"], text=True)
    return int(out.strip())
