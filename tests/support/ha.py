"""A pool of several masters on a real etcd, with real slaves: for the HA
tests and benchmarks/bench_ha.py (one harness for both).

`HaPool(root, masters=3, slaves=2, etcd_members=1)` starts an etcd cluster
(tests/support/etcd.py), the masters (`xcp-master --etcd ...` on loopback
ports) and the slaves (`--master a,b,c`); with `tls=True` every process is on
`--tls-dir` with the pool's certificates (tests/support/pool.py) and
`channel()` speaks mutual TLS as a client identity. `leader()` asks the
masters who leads (PoolService.GetPool); everything is stopped and removed by
`close()`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tests.support.daemons import MasterProcess, SlaveProcess
from tests.support.etcd import EtcdCluster
from tests.support.pool import host_identity, make_tls_dir
from tests.support.processes import wait_until
from xcp.v1 import pool_service_pb2, pool_service_pb2_grpc, vm_service_pb2 as vs
from xcp_control.security import pki


def sync_channel(address: str, tls: pki.TlsDir | None = None,
                 identity: str = "admin") -> grpc.Channel:
    """A plaintext channel, or mutual TLS as the client `identity` of `tls`."""
    if tls is None:
        return grpc.insecure_channel(address)
    paths = tls.client(identity)
    creds = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes(), paths.key.read_bytes(),
                                         paths.cert.read_bytes())
    return grpc.secure_channel(address, creds,
                               options=[("grpc.ssl_target_name_override", pki.MASTER_NAME)])


def get_pool(address: str, timeout: float = 1.0, tls: pki.TlsDir | None = None):
    """The pool as the master at `address` sees it; None if it does not answer."""
    with contextlib.closing(sync_channel(address, tls)) as ch:
        try:
            return pool_service_pb2_grpc.PoolServiceStub(ch).GetPool(
                pool_service_pb2.GetPoolRequest(), timeout=timeout)
        except grpc.RpcError:
            return None


class HaPool:
    """Masters on etcd and slaves, under `root`."""

    def __init__(self, root: Path, masters: int = 3, slaves: int = 2, etcd_members: int = 1,
                 lease_ttl: float = 2.0, master_args: tuple[str, ...] = (),
                 etcd_fsync: bool = True, tls: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_dir(self.root / "tls") if tls else None
        self._tls_args = ["--tls-dir", str(self.tls.path)] if self.tls else []
        self.etcd = EtcdCluster(etcd_members, self.root, fsync=etcd_fsync)
        self.prefix = "/pool"
        self._n_masters, self._n_slaves = masters, slaves
        self._lease_ttl, self._master_args = lease_ttl, list(master_args)
        self.masters: list[MasterProcess] = []
        self.slaves: list[SlaveProcess] = []

    def master_argv(self) -> list[str]:
        return ["--etcd", self.etcd.urls, "--etcd-prefix", self.prefix,
                "--lease-ttl", str(self._lease_ttl), *self._tls_args, *self._master_args]

    def start(self) -> "HaPool":
        self.etcd.start()
        for i in range(self._n_masters):
            self.masters.append(self.new_master(i).start())
        self.wait_leader()
        for i in range(self._n_slaves):
            state = self.root / f"slave{i + 1}"
            if self.tls:
                host_identity(self.tls, state)
            self.slaves.append(SlaveProcess(self.master_list, state, name=f"host{i + 1}",
                                            log_dir=self.root,
                                            extra_args=self._tls_args).start())
        return self

    def channel(self, address: str, identity: str = "admin") -> grpc.Channel:
        """A channel to a master of this pool (mutual TLS as `identity` with tls)."""
        return sync_channel(address, self.tls, identity)

    def new_master(self, i: int) -> MasterProcess:
        return MasterProcess(self.root / f"unused-{i}.db", extra_args=self.master_argv(),
                             log_dir=self.root)

    @property
    def master_list(self) -> str:
        return ",".join(m.address for m in self.masters)

    def by_address(self, address: str) -> MasterProcess:
        return next(m for m in self.masters if m.address == address)

    def leader(self, exclude: tuple[str, ...] = ()) -> str:
        """The leader as a running master (not in `exclude`) reports it; ""."""
        for master in self.masters:
            if master.running and master.address not in exclude:
                pool = get_pool(master.address, tls=self.tls)
                if pool is not None and pool.master and pool.master not in exclude:
                    return pool.master
        return ""

    def wait_leader(self, exclude: tuple[str, ...] = (), timeout: float = 20.0) -> str:
        return wait_until(lambda: self.leader(exclude), timeout, interval=0.02,
                          what="a leader")

    def followers(self, leader: str) -> list[MasterProcess]:
        return [m for m in self.masters if m.running and m.address != leader]

    def wait_hosts_live(self, stubs, count: int, timeout: float = 20.0) -> None:
        """Until `count` hosts are live, as the master behind `stubs` says."""
        from xcp.v1 import host_service_pb2 as hs

        def live() -> bool:
            try:
                reply = stubs.hosts.ListHosts(hs.ListHostsRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return sum(m.live for m in reply.host_metrics) >= count
        wait_until(live, timeout, what=f"{count} live hosts")

    def close(self) -> None:
        for slave in self.slaves:
            slave.stop()
        for master in self.masters:
            master.stop(timeout=3)
        self.etcd.close()

    def __enter__(self) -> "HaPool":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def elapsed_until(predicate, timeout: float, interval: float = 0.005) -> float:
    """Seconds until `predicate()` is truthy (polled), AssertionError after timeout."""
    start = time.monotonic()
    wait_until(predicate, timeout, interval=interval, what="the condition")
    return time.monotonic() - start


@dataclass
class CallRecord:
    """What one client of a `ClientLoad` saw."""

    address: str
    kind: str  # "create" or "read"
    acked: list[str] = field(default_factory=list)  # VMs acknowledged (create)
    answered: int = 0
    failures: list[str] = field(default_factory=list)  # "kind@address: REASON after Ns"
    longest: float = 0.0  # seconds, the slowest call


class ClientLoad:
    """Clients that keep calling until stopped, each on one master and never
    moving on: creators (CreateVM) and readers (GetVM of an acknowledged VM,
    else ListVMs), every call with the client deadline `timeout`. For "changes
    nothing for clients": every failure, and the slowest call, is kept."""

    def __init__(self, addresses: list[str], creators: int = 1, readers: int = 1,
                 timeout: float = 10.0, tls: pki.TlsDir | None = None,
                 pause: float = 0.0) -> None:
        self.timeout, self.pause, self._tls = timeout, pause, tls
        self.records = [CallRecord(a, kind) for a in addresses
                        for kind, n in (("create", creators), ("read", readers))
                        for _ in range(n)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(r,), daemon=True)
                         for r in self.records]

    @property
    def acked(self) -> list[str]:
        return [uuid for r in self.records for uuid in list(r.acked)]

    @property
    def failures(self) -> list[str]:
        return [f for r in self.records for f in list(r.failures)]

    @property
    def answered(self) -> int:
        return sum(r.answered for r in self.records)

    @property
    def longest(self) -> float:
        return max((r.longest for r in self.records), default=0.0)

    def start(self) -> "ClientLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 10)

    def __enter__(self) -> "ClientLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, record: CallRecord) -> None:
        from xcp.v1 import vm_service_pb2_grpc
        from xcp_control.errors import error_info

        with contextlib.closing(sync_channel(record.address, self._tls)) as ch:
            vms = vm_service_pb2_grpc.VMServiceStub(ch)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if record.kind == "create":
                        vm = vms.CreateVM(vs.CreateVMRequest(name_label="load",
                                                             memory=64 * 1024 * 1024, vcpus=1),
                                          timeout=self.timeout)
                        record.acked.append(vm.uuid)
                    else:
                        known = self.acked
                        if known:
                            vms.GetVM(vs.GetVMRequest(uuid=known[-1]), timeout=self.timeout)
                        else:
                            vms.ListVMs(vs.ListVMsRequest(page_size=10), timeout=self.timeout)
                    record.answered += 1
                except grpc.RpcError as exc:
                    info = error_info(exc)
                    why = info.reason if info else exc.code().name
                    record.failures.append(f"{record.kind}@{record.address}: {why} after "
                                           f"{time.monotonic() - started:.2f}s")
                record.longest = max(record.longest, time.monotonic() - started)
                if self.pause:
                    self._stop.wait(self.pause)
