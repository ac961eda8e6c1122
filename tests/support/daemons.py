"""`xcp-master` and `xcp-slave` as real processes (on loopback, or inside a test host).

Each is a `Proc` (tests/support/processes.py): its own session, stdout read by a thread,
stderr in a file, killed at interpreter exit whatever happens. `start()` waits (bounded)
for the line the daemon prints once it serves and takes the address from it; a daemon
that exits or stays silent raises ProcessStartError with its stderr.

Usage::

    with MasterProcess(tmp_path / "pool.db") as master:       # started, stopped at exit
        slave = SlaveProcess(master.address, tmp_path / "host1", name="host1").start()
        ...
        master.kill()                                         # SIGKILL, reaped
        again = MasterProcess(master.db_path).start()         # same database file
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from tests.support.processes import BIN_DIR, Proc

MASTER_BIN = BIN_DIR / "xcp-master"
SLAVE_BIN = BIN_DIR / "xcp-slave"
LISTENING = "xcp-master: listening on "
TOKEN_ENDPOINT = "xcp-master: token endpoint on "  # printed before LISTENING
MASTER_METRICS = "xcp-master: metrics on "  # printed before LISTENING (--metrics-listen)
SLAVE_METRICS = "xcp-slave: metrics on "  # printed before the host line (--metrics-listen)
SLAVE_LINE = re.compile(r"^xcp-slave: host (?P<uuid>[0-9a-f-]{36}) listening on (?P<addr>\S+)$")
START_TIMEOUT = 20.0  # seconds; either daemon starts in < 1 s on an idle machine


def master_args(heartbeat_interval: float = 1.0, dead_after: float = 3.0,
                contact_timeout: float = 2.0, report_interval: float | None = None) -> list[str]:
    """The liveness flags of a master that notices a dead host within seconds.
    The fault tests judge silence from the master's record of the last report
    (sync_to_beat, beat_after), so by default slaves report as often as the
    settings allow (report_interval: at least the interval, and 3 of them at
    least dead_after); a test of the 10 s default passes report_interval."""
    if report_interval is None:
        report_interval = max(heartbeat_interval, round(dead_after / 3 + 0.005, 2))
    return ["--heartbeat-interval", str(heartbeat_interval), "--dead-after", str(dead_after),
            "--contact-timeout", str(contact_timeout), "--report-interval", str(report_interval)]


class MasterProcess(Proc):
    """One `xcp-master` on a database file. `address` is HOST:PORT as it bound it.
    `launcher` replaces the console script (a benchmark's patched master)."""

    def __init__(self, db_path: str | os.PathLike, listen: str = "127.0.0.1:0",
                 extra_args: Sequence[str] = (), log_dir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, cpus: set[int] | None = None,
                 launcher: Sequence[str] = ()) -> None:
        self.db_path = Path(db_path)
        self.listen = listen
        self.extra_args = list(extra_args)
        argv = [*(launcher or [str(MASTER_BIN)]), "--listen", listen, "--db", str(self.db_path),
                *self.extra_args]
        super().__init__(argv, "xcp-master", log_dir=log_dir or self.db_path.parent, env=env,
                         cpus=cpus)
        self.address = ""

    def start(self, timeout: float = START_TIMEOUT) -> "MasterProcess":
        """Start (unless spawned already: a spawned master that exited at once is
        reported, not started again) and wait until it serves; ProcessStartError else."""
        if self.proc is None:
            self.spawn()
        try:
            self.address = self.wait_line(LISTENING, timeout)
        except BaseException:
            self.stop(timeout=2)
            raise
        return self

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def token_address(self) -> str:
        """HOST:PORT of the token endpoint (--token-listen), or "" without one."""
        for line in self.stdout:
            if line.startswith(TOKEN_ENDPOINT):
                return line[len(TOKEN_ENDPOINT):].strip()
        return ""

    @property
    def metrics_url(self) -> str:
        """http://HOST:PORT/metrics (--metrics-listen), or "" without it."""
        return _stdout_value(self, MASTER_METRICS)

    def __enter__(self) -> "MasterProcess":
        return self if self.running else self.start()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit {self.returncode}"
        return f"<MasterProcess {self.address or self.listen} db={self.db_path} {state}>"


class SlaveProcess(Proc):
    """One `xcp-slave` with its own state dir, listening on `ip`:0 (inside `host`, a
    TestHost, when given); `uuid` and `address` once started."""

    def __init__(self, master: str, state_dir: str | os.PathLike, name: str = "",
                 log_dir: str | os.PathLike | None = None, extra_args: Sequence[str] = (),
                 host=None, listen: str | None = None, env: dict[str, str] | None = None,
                 cpus: set[int] | None = None) -> None:
        self.master, self.state_dir = master, Path(state_dir)
        ip = host.host_ip if host is not None else "127.0.0.1"
        self.listen = listen or f"{ip}:0"
        self.host = host
        self.extra_args = list(extra_args)
        argv = [str(SLAVE_BIN), "--master", master, "--listen", self.listen,
                "--state-dir", str(self.state_dir), *(["--name", name] if name else []),
                *self.extra_args]
        super().__init__(argv, name or "xcp-slave", log_dir=log_dir or self.state_dir.parent,
                         env=env, cpus=cpus,
                         exec_prefix=host.exec_argv if host is not None else None)
        self.uuid = ""
        self.address = ""

    def spawn(self) -> "SlaveProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        super().spawn()
        return self

    def start(self, timeout: float = START_TIMEOUT) -> "SlaveProcess":
        """Start and wait until it listens (its first line); ProcessStartError else."""
        self.spawn()
        try:
            match = self.wait_line(SLAVE_LINE, timeout)
        except BaseException:
            self.kill()
            raise
        self.uuid, self.address = match["uuid"], match["addr"]
        return self

    @property
    def metrics_url(self) -> str:
        """http://HOST:PORT/metrics (--metrics-listen), or "" without it."""
        return _stdout_value(self, SLAVE_METRICS)

    def log(self, tail: int | None = None) -> str:
        """Its stderr (its log), or the last `tail` lines of it headed by its name."""
        if tail is None:
            return self.stderr_text()
        lines = self.stderr_text().splitlines()
        return f"--- {self.name} stderr (last {tail} lines)\n" + "\n".join(lines[-tail:])

    def domains(self, timeout: float = 5.0) -> dict[str, int]:
        """vm uuid -> state of the domains the slave itself reports (SlaveService, direct;
        plaintext: a slave started without --tls-dir)."""
        import grpc

        from xcp.v1 import slave_service_pb2 as sl, slave_service_pb2_grpc

        with grpc.insecure_channel(self.address) as ch:
            stub = slave_service_pb2_grpc.SlaveServiceStub(ch)
            reply = stub.ListDomains(sl.ListDomainsRequest(), timeout=timeout,
                                     wait_for_ready=True)
        return {d.vm_uuid: d.state for d in reply.domains}

    def __enter__(self) -> "SlaveProcess":
        return self if self.running else self.start()


def _stdout_value(proc: Proc, prefix: str) -> str:
    """The rest of the first stdout line starting with `prefix`, or ""."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return ""
