"""Settings of the master and the slave: frozen, documented, validated at start-up.

Each setting is declared once, as a dataclass field made by `setting()`: its
default, its one line of doc, and whether (and how) the command line sets it.
`add_arguments` derives the argparse options from those fields and
`from_args` builds the settings back from the parsed namespace, so a new
command-line setting is one line here.

Defaults are DESIGN.md's timing table. `validate()` refuses combinations that
would make the timing promises false (a dead_after not larger than the
heartbeat interval would mark healthy hosts dead between two beats).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting is out of range; the message says which and why."""


# -- values from the command line ------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "1G", "1GiB", "512M", "1.5g" (binary multiples).
    Raises ValueError for anything else. The one size parser: slave flags and
    the `xcp` CLI both use it."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 1G, 1073741824)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def _argparse_type(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """`parse` as an argparse type: a ValueError becomes a usage error (exit 2)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    convert.__name__ = what  # argparse names the type in its message
    return convert


SIZE = _argparse_type(parse_size, "a size (e.g. 64G, 512M, 1073741824)")
SECONDS = _argparse_type(float, "a number of seconds")


def setting(default: Any, doc: str, *, flag: str | None = None, metavar: str | None = None,
            parse: Callable[[str], Any] | None = None, choices: tuple[str, ...] = (),
            cli: bool = True) -> Any:
    """A settings field: its default, its doc line (also the --help text), and
    how the command line sets it (flag defaults to --field-name; cli=False for
    settings only code and tests change)."""
    meta = dict(doc=doc, flag=flag, metavar=metavar, parse=parse, choices=choices, cli=cli)
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _default_parser(f: dataclasses.Field) -> Callable[[str], Any]:
    return f.metadata["parse"] or {"float": SECONDS, "int": int}.get(str(f.type), str)


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per command-line field of the settings class `cls`."""
    defaults = cls()
    for f in _cli_fields(cls):
        default = getattr(defaults, f.name)
        shown = "" if default in ("", None) else f" (default {default})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=default,
                                      help=f.metadata["doc"] + shown)
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["type"] = _default_parser(f)
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(_flag(f), **kwargs)


S = TypeVar("S")


def from_args(cls: type[S], args: argparse.Namespace) -> S:
    """The settings the parsed command line asks for (defaults elsewhere)."""
    return cls(**{f.name: getattr(args, f.name) for f in _cli_fields(cls)})


# -- checks ----------------------------------------------------------------------


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

    listen: str = setting("127.0.0.1:7000", "HOST:PORT to serve on", metavar="HOST:PORT")
    db_path: str = setting("./xcp-pool.db", "SQLite file of the pool database", flag="--db",
                           metavar="PATH")
    heartbeat_interval: float = setting(2.0, "seconds between the master's PINGs on each "
                                        "heartbeat connection", metavar="S")
    dead_after: float = setting(3.0, "seconds of silence before a host is marked not live",
                                metavar="S")
    report_interval: float = setting(10.0, "longest a slave goes between reports (told to "
                                     "slaves); no report for 3 x this marks a host not live",
                                     metavar="S")
    contact_timeout: float = setting(2.0, "longest a forwarded call waits for a silent host",
                                     metavar="S")
    startup_grace: float | None = setting(
        None, "seconds hosts keep their stored state after start (default: dead-after)",
        metavar="S", parse=SECONDS)
    tls_dir: str = setting("", "pool certificates (xcp pool-init): mutual TLS only "
                           "(default: plaintext, for loopback experiments)", metavar="DIR")
    # A second HOST:PORT, TLS without client certificates: callers name themselves
    # with a bearer token, load balancers check health with nothing.
    token_listen: str = setting("", "also serve here with TLS but no client certificate: "
                                "callers send a bearer token (xcp token-issue); needs --tls-dir",
                                metavar="HOST:PORT")
    shed_lag: float = setting(0.5, "refuse new heartbeat streams (TOO_BUSY) while the event "
                              "loop lags more than this many seconds; 0 never", metavar="S")
    metrics_listen: str = setting("", "serve Prometheus metrics at http://HOST:PORT/metrics "
                                  "(default: off)", metavar="HOST:PORT")
    log_level: str = setting("INFO", "stderr log level", choices=LOG_LEVELS)
    reaper_tick: float = setting(0.1, "seconds between two reaper passes", cli=False)
    metrics_write_interval: float = setting(
        30.0, "least seconds between two writes of one host's metrics", cli=False)
    watch_queue_size: int = setting(10_000, "events buffered per watcher before it must "
                                    "resync", cli=False)
    change_log_size: int = setting(100_000, "changes kept for Watch resume by token", cli=False)
    max_message_bytes: int = setting(4 * 1024 * 1024, "largest request the master accepts",
                                     cli=False)
    timeouts: OperationTimeouts = setting(OperationTimeouts(), "per-operation budgets",
                                          cli=False)
    # Several masters on etcd (DESIGN.md "Several masters"); without etcd: SQLite at --db.
    etcd: str = setting("", "etcd client URLs, comma-separated: several masters on etcd "
                        "(default: one master, SQLite at --db)", metavar="URL[,URL...]")
    etcd_prefix: str = setting("/xcp", "key prefix of this pool in etcd", metavar="P")
    advertise: str = setting("", "API address other masters and slaves reach this master at "
                             "(default: the bound address)", metavar="HOST:PORT")
    lease_ttl: float = setting(2.0, "seconds of the leader's etcd lease (etcd's floor is 2)",
                               metavar="S")

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
        if self.metrics_listen:
            parse_endpoint(self.metrics_listen, "--metrics-listen")
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
        self._validate_ha()
        return self

    def _validate_ha(self) -> None:
        if self.advertise:
            parse_endpoint(self.advertise, "--advertise")
        if not self.etcd:
            return
        if not 1 <= self.lease_ttl <= 60:
            raise SettingsError(f"lease_ttl must be within 1..60 s, got {self.lease_ttl}")
        if not self.etcd_prefix.startswith("/") or self.etcd_prefix.rstrip("/") == "":
            raise SettingsError(f"--etcd-prefix must start with / and name something, "
                                f"got {self.etcd_prefix!r}")
        from xcp_control.master.etcd_client import EtcdUrlError, channel_target
        try:
            channel_target(self.etcd)
        except (EtcdUrlError, OSError) as exc:
            raise SettingsError(str(exc)) from None


@dataclass(frozen=True)
class SlaveSettings:
    """Everything `xcp-slave` needs; one instance per process."""

    master: str = setting("127.0.0.1:7000", "the master's endpoint; several masters on etcd: "
                          "all of them, comma-separated", metavar="HOST:PORT[,HOST:PORT...]")
    listen: str = setting("127.0.0.1:0", "where SlaveService listens; port 0 picks a free one",
                          metavar="HOST:PORT")
    advertise: str = setting("", "address reported to the master (default: the bound listen "
                             "address)", metavar="HOST:PORT")
    name: str = setting("", "name_label of this host (default: the state dir's name)")
    state_dir: str = setting("./xcp-slave", "where the host uuid (and nothing else) persists",
                             metavar="DIR")
    memory: int = setting(64 * 1024**3, "bytes of memory domains may use, e.g. 64G",
                          metavar="BYTES", parse=SIZE)
    boot_time: float = setting(0.2, "seconds the simulated hypervisor takes to start a domain",
                               metavar="S")
    clean_shutdown_time: float = setting(0.5, "seconds a simulated guest takes to shut down "
                                         "cleanly", metavar="S")
    hard_shutdown_time: float = setting(0.05, "seconds a simulated power-off takes",
                                        metavar="S")
    pause_time: float = setting(0.02, "seconds a simulated pause or unpause takes",
                                metavar="S")
    reconnect_cap: float = setting(1.0, "longest backoff between two attempts to reach an "
                                   "unreachable master", metavar="S")
    heartbeat_interval: float = setting(1.0, "the master's PING interval assumed until it says "
                                        "its own: the first stream's keepalive is built from "
                                        "it (HA counts the lease with that channel)", metavar="S")
    tls_dir: str = setting("", "pool certificates: speak only mutual TLS (default: plaintext)",
                           metavar="DIR")
    metrics_listen: str = setting("", "serve Prometheus metrics at http://HOST:PORT/metrics "
                                  "(default: off)", metavar="HOST:PORT")
    log_level: str = setting("INFO", "stderr log level", choices=LOG_LEVELS)
    backend: str = setting("simulated", "hypervisor backend", choices=("simulated", "libvirt"))
    libvirt_uri: str = setting("qemu:///system", "libvirt connection of --backend libvirt",
                               metavar="URI")
    libvirt_domain_type: str = setting("auto", "libvirt domain type: kvm, qemu (TCG), or auto "
                                       "(kvm where /dev/kvm opens)",
                                       choices=("auto", "kvm", "qemu"))
    console_dir: str = setting("", "where libvirt guests' serial consoles are logged "
                               "(default: STATE_DIR/console)", metavar="DIR")
    shutdown_timeout: float = setting(50.0, "seconds a libvirt guest gets to honour a clean "
                                      "shutdown before it is hard-stopped", metavar="S")
    shutdown_resend: float = setting(5.0, "seconds between two clean shutdown requests to a "
                                     "libvirt guest", metavar="S")
    fence_after: float = setting(10.0, "with HA enabled: seconds without the leader's "
                                 "acknowledgement before this host fences itself (destroys "
                                 "every domain); the master raises one not above its "
                                 "dead_after + 3 PING intervals", metavar="S")
    watchdog_device: str = setting("", "host watchdog (e.g. /dev/watchdog of modprobe "
                                   "softdog) armed while the leader says HA is enabled and "
                                   "petted only while acknowledged: the host resets when "
                                   "the slave dies, hangs or loses the pool. Default off "
                                   "(never a real watchdog by accident: tests, CI, "
                                   "scripts/pool); HA on the libvirt backend without one "
                                   "logs a warning", metavar="PATH")

    def validate(self) -> "SlaveSettings":
        for master in self.master.split(","):
            parse_endpoint(master.strip(), "--master")
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
        if self.backend not in ("simulated", "libvirt"):
            raise SettingsError(f"backend must be simulated or libvirt, got {self.backend!r}")
        if self.libvirt_domain_type not in ("auto", "kvm", "qemu"):
            raise SettingsError("libvirt_domain_type must be auto, kvm or qemu, "
                                f"got {self.libvirt_domain_type!r}")
        _positive("shutdown_timeout", self.shutdown_timeout)
        _positive("shutdown_resend", self.shutdown_resend)
        _positive("fence_after", self.fence_after)
        _positive("heartbeat_interval", self.heartbeat_interval)
        return self
