"""A real pool on loopback for the CLI, README and Node.js client tests.

`RunningPool` starts an `xcp-master` and N `xcp-slave` processes
(tests/support/daemons.py) on loopback with free ports, waits (bounded) until every
slave is live, and stops everything at exit; with `tls=True` it is a secure pool (as
./scripts/pool starts by default): a pool CA and certificates in `root/tls`
(`make_tls_dir`), every process on `--tls-dir`. `xcp()` runs the CLI as a subprocess
against it. Every process started here is also killed at interpreter exit, so a
failing test never leaves one behind.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Sequence

from tests.support.clients import client_env, xcp
from tests.support.daemons import MasterProcess, SlaveProcess
from tests.support.processes import wait_until
from xcp_control.security import pki

# The identities `xcp pool-init` creates: (name, kind).
CLIENTS = (("admin", "pool-admin"), ("viewer", "read-only"), ("client", "client"))


def make_tls_dir(path: Path) -> pki.TlsDir:
    """A pool CA with the master's and the clients' certificates, as
    `xcp pool-init --tls-dir path` makes them (in-process: faster)."""
    tls = pki.TlsDir(path)
    pki.create_ca(tls)
    pki.issue(tls, tls.master(), "master", "master")
    for name, kind in CLIENTS:
        pki.issue(tls, tls.client(name), name, kind)
    return tls


def host_identity(tls: pki.TlsDir, state_dir: Path) -> str:
    """Give the slave of `state_dir` its uuid before its first start, and a
    certificate for it (kept when it has one)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "host-uuid"
    if not path.exists():
        path.write_text(f"{uuid.uuid4()}\n")
    host_uuid = path.read_text().strip()
    if not tls.host(host_uuid).cert.exists():
        pki.issue(tls, tls.host(host_uuid), host_uuid, "host")
    return host_uuid


class RunningPool:
    """A master and `slaves` slaves (host1..hostN) under `root`; mutual TLS
    with the certificates of `root/tls` when `tls` is true."""

    def __init__(self, root: Path, slaves: int = 3,
                 master_args: Sequence[str] = (), tls: bool = False,
                 slave_args: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls_dir(self.root / "tls") if tls else None
        tls_args = ["--tls-dir", str(self.tls.path)] if self.tls else []
        self.master = MasterProcess(self.root / "pool.db", log_dir=self.root,
                                    extra_args=[*master_args, *tls_args])
        self.count = slaves
        self.slave_args = list(slave_args)
        self.slaves: dict[str, SlaveProcess] = {}

    @property
    def address(self) -> str:
        return self.master.address

    @property
    def tls_dir(self) -> Path | None:
        return self.tls.path if self.tls else None

    def env(self, identity: str | None = None, token: str | None = None) -> dict[str, str]:
        """The environment of a client of this pool (XCP_MASTER, XCP_TLS_DIR)."""
        return client_env(self.address, self.tls_dir, identity, token)

    def start(self) -> "RunningPool":
        try:
            self.master.start()
            for i in range(1, self.count + 1):
                name = f"host{i}"
                state = self.root / "slaves" / name
                extra: list[str] = list(self.slave_args)
                if self.tls:
                    host_identity(self.tls, state)
                    extra += ["--tls-dir", str(self.tls.path)]
                self.slaves[name] = SlaveProcess(self.address, state, name, self.root,
                                                 extra_args=extra).start()
            self.wait_live({s.uuid for s in self.slaves.values()})
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for slave in self.slaves.values():
            slave.stop()
        self.master.stop()

    def __enter__(self) -> "RunningPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- views through the CLI ------------------------------------------------

    def xcp(self, *args: str, timeout: float = 60.0, identity: str | None = None,
            token: str | None = None, **kwargs) -> subprocess.CompletedProcess:
        """`xcp ARGS` as a client of this pool (as admin, on a secure one)."""
        kwargs.setdefault("env", self.env(identity, token))
        return xcp(*args, timeout=timeout, **kwargs)

    def live(self) -> dict[str, bool]:
        """host uuid -> live, as host-list --json reports it."""
        result = self.xcp("host-list", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        return {m["host"]: m["live"] for m in doc["host_metrics"]}

    def wait_live(self, hosts: set[str], live: bool = True, timeout: float = 15.0) -> None:
        wait_until(lambda: all(self.live().get(h) is live for h in hosts), timeout,
                   interval=0.1, what=f"hosts {sorted(hosts)} live={live}")
