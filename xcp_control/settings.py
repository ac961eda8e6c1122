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


# Liveness timing (README, "Timing"): the master's C-core PINGs every connection
# heartbeat_interval after its last packet and closes it when the PING goes
# unanswered for dead_after - heartbeat_interval; reports are the backstop.
MIN_PING_TIMEOUT = 0.5  # s: a loaded peer's C-core may take a few hundred ms to answer
REPORT_DEADLINE_INTERVALS = 3  # reports missed in a row before the backstop acts


def _check_liveness_timing(s: "MasterSettings") -> None:
    if s.ping_timeout < MIN_PING_TIMEOUT:
        raise SettingsError(
            f"dead_after ({s.dead_after}s) must be larger than heartbeat_interval "
            f"({s.heartbeat_interval}s) by at least {MIN_PING_TIMEOUT}s: that difference is "
            f"how long a PING may go unanswered, and a shorter one cuts healthy hosts")
    if s.report_interval < s.heartbeat_interval:
        raise SettingsError(
            f"report_interval ({s.report_interval}s) must be at least heartbeat_interval "
            f"({s.heartbeat_interval}s): PINGs already prove life that often, more frequent "
            f"reports only cost the master")
    if s.report_deadline < s.dead_after:
        raise SettingsError(
            f"{REPORT_DEADLINE_INTERVALS} x report_interval ({s.report_deadline}s) must be at least "
            f"dead_after ({s.dead_after}s): the report backstop must not judge before "
            f"the transport does")


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
    heartbeat_interval: float = 2.0  # seconds between the master's PINGs on each connection
    dead_after: float = 3.0  # seconds of silence before a host is marked not live
    report_interval: float = 10.0  # longest a slave goes between reports (told to slaves)
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
    timeouts: OperationTimeouts = field(default_factory=OperationTimeouts)  # per-operation budgets

    @property
    def grace(self) -> float:
        return self.dead_after if self.startup_grace is None else self.startup_grace

    @property
    def ping_timeout(self) -> float:
        """How long a PING may go unanswered: a PING goes out heartbeat_interval
        after the last packet, so silence is caught exactly dead_after after it."""
        return self.dead_after - self.heartbeat_interval

    @property
    def report_deadline(self) -> float:
        """No report for this long marks a host not live (the backstop for a
        slave whose C-core answers PINGs while its Python is stuck)."""
        return REPORT_DEADLINE_INTERVALS * self.report_interval

    def validate(self) -> "MasterSettings":
        parse_endpoint(self.listen, "--listen")
        if self.token_listen:
            parse_endpoint(self.token_listen, "--token-listen")
            if not self.tls_dir:
                raise SettingsError("--token-listen needs --tls-dir: it is a TLS endpoint "
                                    "(without TLS every caller is trusted anyway)")
        for name in ("heartbeat_interval", "dead_after", "report_interval", "contact_timeout",
                     "reaper_tick", "metrics_write_interval"):
            _positive(name, getattr(self, name))
        _check_liveness_timing(self)
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

    def validate(self) -> "SlaveSettings":
        parse_endpoint(self.master, "--master")
        parse_endpoint(self.listen, "--listen")
        if self.advertise:
            parse_endpoint(self.advertise, "--advertise")
        _positive("memory", self.memory)
        _positive("reconnect_cap", self.reconnect_cap)
        for name in ("boot_time", "clean_shutdown_time", "hard_shutdown_time", "pause_time"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0")
        return self
