"""`xcp`: arguments, the command table and the main entry point (the commands
themselves are in cli/commands.py).

One sub-command per RPC of the master (see DESIGN.md): host-* for
HostService, vm-* for VMService, watch for EventService. Hosts and VMs are
named by uuid or by name_label, as with xapi's `xe`.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from xcp.v1 import datamodel_pb2 as dm
from xcp_control.cli import certs, render, top
from xcp_control.cli.commands import (
    Context, cmd_host_declare_dead, cmd_host_disable, cmd_host_enable, cmd_host_forget,
    cmd_host_get, cmd_host_list, cmd_host_metrics, cmd_vm_create, cmd_vm_destroy,
    cmd_vm_get, cmd_vm_list, cmd_vm_pause, cmd_vm_reboot, cmd_vm_shutdown, cmd_vm_start,
    cmd_vm_unpause, cmd_watch, cmd_pool_get, cmd_pool_ha_enable, cmd_pool_ha_disable,
    cmd_vm_set)
from xcp_control.cli.client import (
    EXIT_CODES, INTERRUPTED, OK, USAGE, CliError, Connection, client_credentials)
from xcp_control.settings import SettingsError, parse_endpoint, parse_size

DEFAULT_MASTER = "127.0.0.1:7000"
READ_TIMEOUT = 30.0  # seconds: reads and record changes
LIFECYCLE_TIMEOUT = 120.0  # seconds: forwarded operations (a clean shutdown may take 60 s)
WATCH_CLASSES = ("host", "host_metrics", "vm", "pool")
POWER_STATES = [n for n in dm.PowerState.keys() if n != "POWER_STATE_UNSPECIFIED"]


# -- argument types ------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


HA_PRIORITIES = {"restart": dm.RESTART, "best-effort": dm.BEST_EFFORT,
                 "none": dm.HA_RESTART_PRIORITY_UNSPECIFIED}


def _ha_priority(text: str) -> int:
    if text.lower() not in HA_PRIORITIES:
        raise argparse.ArgumentTypeError(
            f"unknown HA restart priority {text!r} (one of {', '.join(HA_PRIORITIES)})")
    return HA_PRIORITIES[text.lower()]


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _failures(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _power_state(text: str) -> int:
    name = text.upper()
    if name not in POWER_STATES:
        raise argparse.ArgumentTypeError(
            f"unknown power state {text!r} (one of {', '.join(s.lower() for s in POWER_STATES)})")
    return dm.PowerState.Value(name)


def _classes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in WATCH_CLASSES:
            raise argparse.ArgumentTypeError(
                f"unknown class {name!r} (one of {', '.join(WATCH_CLASSES)})")
    return names


# -- parser --------------------------------------------------------------------------

_EXAMPLES = """\
examples:
  xcp host-list                          hosts, whether live, age of the last heartbeat
  xcp vm-create web1 --memory 1G         prints the new VM's uuid
  xcp vm-start web1 --host host2         start it (placement picks a host without --host)
  xcp vm-list --power-state running --json
  xcp watch --class host_metrics         events as they happen (Ctrl-C stops)
  xcp top --metrics 127.0.0.1:9100       live view of hosts, flips and forwarded calls
"""


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)
    return (f"{_EXAMPLES}\nhosts and VMs are named by uuid or by name_label.\n\n"
            f"environment:\n  XCP_MASTER  the master's HOST:PORT when --master is not given "
            f"(default {DEFAULT_MASTER})\n"
            f"  XCP_TLS_DIR, XCP_IDENTITY, XCP_TOKEN, XCP_CA_CERT  defaults of --tls-dir, "
            f"--identity, --auth-token, --ca-cert\n"
            f"  XCP_METRICS  the master's metrics endpoint, for `xcp top` (default of --metrics)\n\n"
            f"exit codes:\n{codes}\n")


def _common() -> argparse.ArgumentParser:
    """Options accepted both before and after the command (defaults are
    applied after parsing, so the two places do not overwrite each other)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--master", default=argparse.SUPPRESS, metavar="HOST:PORT",
                   help=f"the master (default: $XCP_MASTER, else {DEFAULT_MASTER})")
    g.add_argument("--timeout", type=_seconds, default=argparse.SUPPRESS, metavar="S",
                   help=f"client deadline in seconds (default {READ_TIMEOUT:g}, "
                        f"{LIFECYCLE_TIMEOUT:g} for lifecycle operations; "
                        f"for watch: how long to watch, default until Ctrl-C)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print JSON (proto field names) instead of tables")
    s = p.add_argument_group("security (a pool started with --tls-dir)")
    s.add_argument("--tls-dir", default=argparse.SUPPRESS, metavar="DIR",
                   help="the pool's certificates: speak mutual TLS (default: $XCP_TLS_DIR, "
                        "else plaintext)")
    s.add_argument("--identity", default=argparse.SUPPRESS, metavar="NAME",
                   help="which client certificate of --tls-dir to use (default: "
                        "$XCP_IDENTITY, else admin)")
    s.add_argument("--auth-token", default=argparse.SUPPRESS, metavar="TOKEN",
                   help="a bearer token naming the caller (default: $XCP_TOKEN)")
    s.add_argument("--ca-cert", default=argparse.SUPPRESS, metavar="FILE",
                   help="the pool CA's certificate: TLS presenting no certificate, for the "
                        "master's token endpoint with --auth-token; overrides --tls-dir "
                        "(default: $XCP_CA_CERT)")
    return p


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[Context], None]
    lifecycle: bool = False
    add: Callable[[argparse.ArgumentParser], None] | None = None
    offline: bool = False  # works on files only: no connection to the master


def _host_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", metavar="HOST", help="host uuid or name_label")


def _vm_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("vm", metavar="VM", help="VM uuid or name_label")


def _vm_create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name_label", metavar="NAME", help="the VM's name_label")
    p.add_argument("--memory", type=_size, default=parse_size("1G"), metavar="SIZE",
                   help="memory, e.g. 512M, 2G or bytes (default 1G)")
    p.add_argument("--vcpus", type=_count, default=1, metavar="N",
                   help="virtual CPUs (default 1)")
    p.add_argument("--affinity", metavar="HOST", default="",
                   help="host placement should prefer (uuid or name_label)")
    p.add_argument("--other-config", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="an other_config entry (repeatable)")
    for flag, what in (("--pv-kernel", "guest kernel path on the hosts (libvirt backend)"),
                       ("--pv-ramdisk", "guest initial ramdisk path on the hosts"),
                       ("--pv-args", "guest kernel command line")):
        p.add_argument(flag, default="", metavar="PATH" if "args" not in flag else "ARGS",
                       help=what)


def _vm_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="HOST", default="",
                   help="only VMs resident on this host (uuid or name_label)")
    p.add_argument("--power-state", type=_power_state, default=None, metavar="STATE",
                   help=f"only VMs in this state ({', '.join(s.lower() for s in POWER_STATES)})")


def _vm_start_args(p: argparse.ArgumentParser) -> None:
    _vm_arg(p)
    p.add_argument("--host", metavar="HOST", default="",
                   help="start on this host (default: placement chooses a live, enabled "
                        "host with room)")
    p.add_argument("--paused", action="store_true", help="leave the VM PAUSED")


def _vm_set_args(p: argparse.ArgumentParser) -> None:
    _vm_arg(p)
    p.add_argument("--ha-restart-priority", type=_ha_priority, default=None,
                   metavar="PRIORITY",
                   help="restart (planned for), best-effort (where room remains) or none")
    p.add_argument("--ha-restart-order", type=_whole, default=None, metavar="N",
                   help="RESTART VMs are restarted in increasing order")


def _ha_enable_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--failures", type=_failures, default=0, metavar="N",
                   help="host failures the plan must survive: StartVM and UpdateVM that "
                        "would lower the plan below it are refused (default 0: no check)")


def _force(what: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        _vm_arg(p)
        p.add_argument("--force", action="store_true", help=f"hard {what} instead of clean")
    return add


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="classes", type=_classes, action="append",
                   metavar="CLASS[,CLASS]",
                   help=f"only these classes ({', '.join(WATCH_CLASSES)}; repeatable; "
                        f"default all)")
    p.add_argument("--token", default="", metavar="TOKEN",
                   help="resume after the event that carried this token (default: "
                        "the current objects first, then changes)")
    p.add_argument("--count", type=_count, default=None, metavar="N",
                   help="stop after N events (the snapshot and SYNC count)")


COMMANDS = (
    Command("host-list", "list hosts: live or not, and the age of the last heartbeat",
            cmd_host_list),
    Command("host-get", "show one host", cmd_host_get, add=_host_arg),
    Command("host-metrics", "show a host's metrics (live, last heartbeat, memory)",
            cmd_host_metrics, add=_host_arg),
    Command("host-disable", "stop placement on a host (forwarded to it)", cmd_host_disable,
            lifecycle=True, add=_host_arg),
    Command("host-enable", "allow placement on a host again (forwarded)", cmd_host_enable,
            lifecycle=True, add=_host_arg),
    Command("host-declare-dead", "assert a host is down: not live, its VMs HALTED",
            cmd_host_declare_dead, add=_host_arg),
    Command("host-forget", "remove a host that is not live", cmd_host_forget, add=_host_arg),
    Command("vm-create", "create a HALTED VM; prints its uuid", cmd_vm_create,
            add=_vm_create_args),
    Command("vm-get", "show one VM", cmd_vm_get, add=_vm_arg),
    Command("vm-list", "list VMs", cmd_vm_list, add=_vm_list_args),
    Command("vm-destroy", "remove a HALTED VM", cmd_vm_destroy, add=_vm_arg),
    Command("vm-start", "start a HALTED VM", cmd_vm_start, lifecycle=True, add=_vm_start_args),
    Command("vm-shutdown", "shut a VM down (clean, or hard with --force)", cmd_vm_shutdown,
            lifecycle=True, add=_force("power-off")),
    Command("vm-reboot", "reboot a RUNNING VM (clean, or hard with --force)", cmd_vm_reboot,
            lifecycle=True, add=_force("reset")),
    Command("vm-pause", "pause a RUNNING VM", cmd_vm_pause, lifecycle=True, add=_vm_arg),
    Command("vm-unpause", "unpause a PAUSED VM", cmd_vm_unpause, lifecycle=True, add=_vm_arg),
    Command("vm-set", "change a VM's HA settings (UpdateVM)", cmd_vm_set, add=_vm_set_args),
    Command("pool-get", "show the pool: who leads, HA settings and the failover plan",
            cmd_pool_get),
    Command("pool-ha-enable", "restart protected VMs of failed hosts elsewhere",
            cmd_pool_ha_enable, add=_ha_enable_args),
    Command("pool-ha-disable", "stop HA: nothing fences or restarts", cmd_pool_ha_disable),
    Command("watch", "print events as they happen (one line each; --json: one object "
                     "per line)", cmd_watch, add=_watch_args),
    Command("top", "a live view of the pool: hosts, live, last report, memory, VMs, recent "
                   "flips, forwarded calls (with --metrics); piped: one snapshot",
            top.cmd_top, add=top.add_args),
    Command("pool-init", "create the pool CA, the master's and client certificates in "
                         "--tls-dir", lambda c: certs.pool_init(c.args),
            add=certs.add_pool_init_args, offline=True),
    Command("cert-issue", "issue a certificate of the pool CA (a slave's: --kind host "
                          "--name <uuid>)", lambda c: certs.cert_issue(c.args),
            add=certs.add_cert_issue_args, offline=True),
    Command("token-issue", "issue a bearer token with a role; prints it once",
            lambda c: certs.token_issue(c.args), add=certs.add_token_issue_args, offline=True),
)
BY_NAME = {c.name: c for c in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="xcp", parents=[common], epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Command-line client of the xcp pool master, in the spirit of "
                    "xapi's xe: one command per API call.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                title="commands")
    for command in COMMANDS:
        p = sub.add_parser(command.name, parents=[common], help=command.help,
                           description=command.help, epilog=_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.add is not None:
            command.add(p)
    return parser


def parse_args(argv: list[str] | None, environ: dict[str, str] | None = None,
               parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse and fill in the defaults of the common options (usage error,
    exit 2, on anything malformed)."""
    environ = os.environ if environ is None else environ
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    command = BY_NAME[args.command]
    args.master = getattr(args, "master", None) or environ.get("XCP_MASTER") or DEFAULT_MASTER
    try:
        parse_endpoint(args.master, "--master")
    except SettingsError as exc:
        parser.error(str(exc))
    args.json = getattr(args, "json", False)
    args.tls_dir = getattr(args, "tls_dir", None) or environ.get("XCP_TLS_DIR", "")
    args.identity = getattr(args, "identity", None) or environ.get("XCP_IDENTITY", "admin")
    args.auth_token = getattr(args, "auth_token", None) or environ.get("XCP_TOKEN", "")
    args.ca_cert = getattr(args, "ca_cert", None) or environ.get("XCP_CA_CERT", "")
    if command.name == "top":
        args.metrics = args.metrics or environ.get("XCP_METRICS", "")
    explicit = getattr(args, "timeout", None)
    if command.name == "watch":
        args.timeout = explicit  # None: watch until stopped
        args.call_timeout = READ_TIMEOUT
    else:
        args.timeout = explicit or (LIFECYCLE_TIMEOUT if command.lifecycle else READ_TIMEOUT)
        args.call_timeout = args.timeout
    return args


def _spinner(text: str):
    """A rich spinner on stderr while a long call runs; nothing when stderr is
    not a terminal (piped, redirected, CI)."""
    from rich.console import Console
    console = Console(stderr=True)
    if not console.is_terminal:
        return nullcontext()
    return console.status(f"{text}...", spinner="dots")


def main(argv: list[str] | None = None) -> int:
    """The `xcp` console script; returns the exit code (see `xcp --help`)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return USAGE if exc.code not in (0, None) else OK
    command = BY_NAME[args.command]
    out = render.Output(json_mode=args.json)
    try:
        if command.offline:
            command.run(Context(None, out, args))
            return OK
        with Connection(args.master, args.call_timeout, spinner=_spinner,
                        credentials=client_credentials(args.tls_dir, args.identity,
                                                       args.ca_cert),
                        token=args.auth_token) as conn:
            command.run(Context(conn, out, args))
    except CliError as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`xcp watch | head`): stop quietly. Point
        # stdout at /dev/null so the interpreter's final flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK
    return OK
