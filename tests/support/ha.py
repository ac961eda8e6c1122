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
import time
from pathlib import Path

import grpc

from tests.support.daemons import MasterProcess, SlaveProcess
from tests.support.etcd import EtcdCluster
from tests.support.pool import host_identity, make_tls_dir
from tests.support.processes import wait_until
from xcp.v1 import pool_service_pb2, pool_service_pb2_grpc
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
