"""Settings of the master and the slave: frozen, documented, validated at start-up.

Defaults are DESIGN.md's timing table. `validate()` refuses combinations that
would make the timing promises false (a dead_after not larger than the
heartbeat interval would mark healthy hosts dead between two beats).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class SettingsError(ValueError):
    """A setting is out of range; the message says which and why."""


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise SettingsError(f"{name} must be > 0, got {value}")


def parse_endpoint(value: str, what: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [addr]:port); refuse anything else."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class OperationTimeouts:
    """How long the master lets each kind of forwarded operation run on a slave."""

    start: float = 30.0  # StartDomain: boot a domain
    clean_shutdown: float = 60.0  # ShutdownDomain(force=False): a guest may take long
    hard_shutdown: float = 10.0  # ShutdownDomain(force=True)
    reboot: float = 60.0  # RebootDomain, clean or hard
    pause: float = 10.0  # PauseDomain and UnpauseDomain
    destroy: float = 10.0  # DestroyDomain
    admin: float = 10.0  # SetEnabled, ListDomains


@dataclass(frozen=True)
class MasterSettings:
    """Everything `xcp-master` needs; one instance per process."""

    listen: str = "127.0.0.1:7000"  # HOST:PORT the master serves on
    db_path: str = "./xcp-pool.db"  # SQLite file of the pool database
    heartbeat_interval: float = 1.0  # seconds between a slave's beats (told to slaves)
    dead_after: float = 3.0  # seconds of silence before a host is marked not live
    contact_timeout: float = 2.0  # longest a forwarded call waits for a silent peer
    startup_grace: float | None = None  # seconds hosts keep their stored state; None = dead_after
    reaper_tick: float = 0.1  # seconds between two reaper passes
    metrics_write_interval: float = 30.0  # least seconds between two metrics writes of one host
    watch_queue_size: int = 10_000  # events buffered per watcher before it must resync
    change_log_size: int = 100_000  # changes kept for Watch resume by token
    max_message_bytes: int = 4 * 1024 * 1024  # largest request the master accepts
    shed_lag: float = 0.5  # loop lag (s) above which new heartbeat streams get TOO_BUSY; 0 = never
    tls_dir: str = ""  # pool certificates (pki.py); empty = plaintext, for loopback experiments
    # A second HOST:PORT, TLS without client certificates: callers name themselves
    # with a bearer token, load balancers check health with nothing; empty = none.
    token_listen: str = ""
    metrics_listen: str = ""  # HOST:PORT serving Prometheus text at /metrics; empty = off
    timeouts: OperationTimeouts = field(default_factory=OperationTimeouts)  # per-operation budgets

    @property
    def grace(self) -> float:
        return self.dead_after if self.startup_grace is None else self.startup_grace

    def validate(self) -> "MasterSettings":
        parse_endpoint(self.listen, "--listen")
        if self.token_listen:
            parse_endpoint(self.token_listen, "--token-listen")
            if not self.tls_dir:
                raise SettingsError("--token-listen needs --tls-dir: it is a TLS endpoint "
                                    "(without TLS every caller is trusted anyway)")
        if self.metrics_listen:
            parse_endpoint(self.metrics_listen, "--metrics-listen")
        for name in ("heartbeat_interval", "dead_after", "contact_timeout", "reaper_tick",
                     "metrics_write_interval"):
            _positive(name, getattr(self, name))
        if self.dead_after <= self.heartbeat_interval:
            raise SettingsError(
                f"dead_after ({self.dead_after}s) must be larger than heartbeat_interval "
                f"({self.heartbeat_interval}s): hosts would be marked dead between beats")
        if self.shed_lag < 0:
            raise SettingsError(f"shed_lag must be >= 0, got {self.shed_lag}")
        if self.grace < 0:
            raise SettingsError(f"startup_grace must be >= 0, got {self.startup_grace}")
        if self.watch_queue_size < 1 or self.change_log_size < 1:
            raise SettingsError("watch_queue_size and change_log_size must be >= 1")
        for name, value in vars(self.timeouts).items():
            _positive(f"timeouts.{name}", value)
        return self


@dataclass(frozen=True)
class SlaveSettings:
    """Everything `xcp-slave` needs; one instance per process."""

    master: str = "127.0.0.1:7000"  # HOST:PORT of the master
    listen: str = "127.0.0.1:0"  # HOST:PORT of SlaveService; port 0 picks a free one
    name: str = ""  # name_label of this host; empty = the state dir's name
    state_dir: str = "./xcp-slave"  # where the host uuid (and nothing else) persists
    advertise: str = ""  # address reported to the master; empty = the bound listen address
    memory: int = 64 * 1024**3  # bytes of memory domains may use on this host
    boot_time: float = 0.2  # seconds the simulated hypervisor takes to start a domain
    clean_shutdown_time: float = 0.5  # seconds a simulated guest takes to shut down cleanly
    hard_shutdown_time: float = 0.05  # seconds a simulated power-off takes
    pause_time: float = 0.02  # seconds a simulated pause or unpause takes
    reconnect_cap: float = 1.0  # longest backoff between two attempts to reach the master
    tls_dir: str = ""  # pool certificates (pki.py); empty = plaintext, for loopback experiments
    metrics_listen: str = ""  # HOST:PORT serving Prometheus text at /metrics; empty = off

    def validate(self) -> "SlaveSettings":
        parse_endpoint(self.master, "--master")
        if self.metrics_listen:
            parse_endpoint(self.metrics_listen, "--metrics-listen")
        parse_endpoint(self.listen, "--listen")
        if self.advertise:
            parse_endpoint(self.advertise, "--advertise")
        _positive("memory", self.memory)
        _positive("reconnect_cap", self.reconnect_cap)
        for name in ("boot_time", "clean_shutdown_time", "hard_shutdown_time", "pause_time"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0")
        return self
