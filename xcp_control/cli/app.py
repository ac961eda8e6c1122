"""`xcp`: arguments, commands and the main entry point.

One sub-command per RPC of the master (see DESIGN.md): host-* for
HostService, vm-* for VMService, watch for EventService. Hosts and VMs are
named by uuid or by name_label, as with xapi's `xe`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import grpc

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import vm_service_pb2 as vs
from xcp_control.cli import certs, render
from xcp_control.cli.client import (
    EXIT_CODES, INTERRUPTED, OK, USAGE, CliError, Connection, client_credentials)
from xcp_control.settings import SettingsError, parse_endpoint, parse_size

DEFAULT_MASTER = "127.0.0.1:7000"
READ_TIMEOUT = 30.0  # seconds: reads and record changes
LIFECYCLE_TIMEOUT = 120.0  # seconds: forwarded operations (a clean shutdown may take 60 s)
WATCH_CLASSES = ("host", "host_metrics", "vm")
LIST_PAGE = 5_000  # VMs per ListVMs call (about 0.5 MB)
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


# -- commands ----------------------------------------------------------------------------


@dataclass
class Context:
    conn: Connection | None  # None for the offline (certificate) commands
    out: render.Output
    args: argparse.Namespace


def cmd_host_list(c: Context) -> None:
    response = c.conn.call(c.conn.hosts.ListHosts, hs.ListHostsRequest())
    if c.out.json_mode:
        c.out.json(response)
    else:
        c.out.table(render.host_table(response))


def cmd_host_get(c: Context) -> None:
    host = c.conn.call(c.conn.hosts.GetHost, hs.GetHostRequest(uuid=c.conn.host_uuid(c.args.host)))
    c.out.json(host) if c.out.json_mode else c.out.record(host)


def cmd_host_metrics(c: Context) -> None:
    uuid = c.conn.host_uuid(c.args.host)
    metrics = c.conn.call(c.conn.hosts.GetHostMetrics, hs.GetHostMetricsRequest(uuid=uuid))
    c.out.json(metrics) if c.out.json_mode else c.out.record(metrics)


def _host_op(method: str, request_type, progress: str, done: str) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        uuid = c.conn.host_uuid(c.args.host)
        host = c.conn.call(getattr(c.conn.hosts, method), request_type(uuid=uuid),
                           progress=f"{progress} {c.args.host}")
        c.out.json(host) if c.out.json_mode else c.out.write(render.host_summary(host, done))
    return run


cmd_host_disable = _host_op("DisableHost", hs.DisableHostRequest, "disabling", "disabled")
cmd_host_enable = _host_op("EnableHost", hs.EnableHostRequest, "enabling", "enabled")
cmd_host_declare_dead = _host_op("DeclareDead", hs.DeclareDeadRequest, "declaring dead",
                                 "declared dead: not live, its VMs HALTED")


def cmd_host_forget(c: Context) -> None:
    uuid = c.conn.host_uuid(c.args.host)
    response = c.conn.call(c.conn.hosts.ForgetHost, hs.ForgetHostRequest(uuid=uuid))
    if c.out.json_mode:
        c.out.json(response)


def cmd_vm_create(c: Context) -> None:
    a = c.args
    affinity = c.conn.host_uuid(a.affinity) if a.affinity else ""
    vm = c.conn.call(c.conn.vms.CreateVM, vs.CreateVMRequest(
        name_label=a.name_label, memory=a.memory, vcpus=a.vcpus, affinity=affinity,
        other_config=dict(a.other_config or [])))
    # Like `xe vm-install`: the new uuid alone, for VM=$(xcp vm-create ...).
    c.out.json(vm) if c.out.json_mode else c.out.write(vm.uuid)


def cmd_vm_get(c: Context) -> None:
    vm = c.conn.call(c.conn.vms.GetVM, vs.GetVMRequest(uuid=c.conn.vm_uuid(c.args.vm)))
    c.out.json(vm) if c.out.json_mode else c.out.record(vm)


def cmd_vm_list(c: Context) -> None:
    host = c.conn.host_uuid(c.args.host) if c.args.host else ""
    response = vs.ListVMsResponse()
    request = vs.ListVMsRequest(host=host, page_size=LIST_PAGE,
                                power_state=c.args.power_state or dm.POWER_STATE_UNSPECIFIED)
    while True:  # page by page: a large pool's list exceeds one message
        page = c.conn.call(c.conn.vms.ListVMs, request)
        response.vms.extend(page.vms)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if c.out.json_mode:
        c.out.json(response)
    else:
        names = c.conn.host_names() if any(v.resident_on for v in response.vms) else {}
        c.out.table(render.vm_table(response.vms, names))


def cmd_vm_destroy(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    response = c.conn.call(c.conn.vms.DestroyVM, vs.DestroyVMRequest(uuid=uuid))
    if c.out.json_mode:
        c.out.json(response)


def _vm_result(c: Context, vm: dm.VM) -> None:
    if c.out.json_mode:
        c.out.json(vm)
        return
    name = c.conn.host_names().get(vm.resident_on, "") if vm.resident_on else ""
    c.out.write(render.vm_summary(vm, name))


def cmd_vm_start(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    host = c.conn.host_uuid(c.args.host) if c.args.host else ""
    where = f" on {c.args.host}" if c.args.host else ""
    vm = c.conn.call(c.conn.vms.StartVM, vs.StartVMRequest(uuid=uuid, host=host,
                                                           paused=c.args.paused),
                     progress=f"starting {c.args.vm}{where}")
    _vm_result(c, vm)


def cmd_vm_shutdown(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    how = "hard" if c.args.force else "clean"
    vm = c.conn.call(c.conn.vms.ShutdownVM, vs.ShutdownVMRequest(uuid=uuid, force=c.args.force),
                     progress=f"shutting {c.args.vm} down ({how})")
    _vm_result(c, vm)


def cmd_vm_reboot(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    how = "hard" if c.args.force else "clean"
    vm = c.conn.call(c.conn.vms.RebootVM, vs.RebootVMRequest(uuid=uuid, force=c.args.force),
                     progress=f"rebooting {c.args.vm} ({how})")
    _vm_result(c, vm)


def cmd_vm_pause(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    vm = c.conn.call(c.conn.vms.PauseVM, vs.PauseVMRequest(uuid=uuid),
                     progress=f"pausing {c.args.vm}")
    _vm_result(c, vm)


def cmd_vm_unpause(c: Context) -> None:
    uuid = c.conn.vm_uuid(c.args.vm)
    vm = c.conn.call(c.conn.vms.UnpauseVM, vs.UnpauseVMRequest(uuid=uuid),
                     progress=f"unpausing {c.args.vm}")
    _vm_result(c, vm)


def cmd_watch(c: Context) -> None:
    """Stream events, one line each, until Ctrl-C, SIGTERM, --count or --timeout."""
    classes = [name for group in (c.args.classes or []) for name in group]
    request = ev.WatchRequest(classes=list(dict.fromkeys(classes)), token=c.args.token or "")
    names: dict[str, str] = {}
    if not c.out.json_mode and (not classes or "host_metrics" in classes or "vm" in classes):
        names = c.conn.host_names()
    # No deadline unless --timeout was given: then it is how long to watch.
    deadline = c.args.timeout
    call = c.conn.events.Watch(request, timeout=deadline, metadata=c.conn.metadata)
    stopped = []

    def stop(signum, frame) -> None:
        # Cancel the call rather than raise mid-read: an exception thrown into
        # grpc's waiting thread machinery can leave its locks inconsistent.
        stopped.append(signum)
        call.cancel()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    shown = 0
    try:
        for event in call:
            if event.WhichOneof("object") == "host":
                names[event.uuid] = event.host.name_label
            if c.out.json_mode:
                c.out.json(event, indent=None)
            else:
                c.out.write(render.event_line(event, names))
            shown += 1
            if c.args.count and shown >= c.args.count:
                break
    except grpc.RpcError as exc:
        finished = deadline and c.conn.connected and \
            exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if not (stopped or finished):
            raise c.conn.error(exc, deadline) from None
    finally:
        call.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- parser --------------------------------------------------------------------------

_EXAMPLES = """\
examples:
  xcp host-list                          hosts, whether live, age of the last heartbeat
  xcp vm-create web1 --memory 1G         prints the new VM's uuid
  xcp vm-start web1 --host host2         start it (placement picks a host without --host)
  xcp vm-list --power-state running --json
  xcp watch --class host_metrics         events as they happen (Ctrl-C stops)
"""


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)
    return (f"{_EXAMPLES}\nhosts and VMs are named by uuid or by name_label.\n\n"
            f"environment:\n  XCP_MASTER  the master's HOST:PORT when --master is not given "
            f"(default {DEFAULT_MASTER})\n"
            f"  XCP_TLS_DIR, XCP_IDENTITY, XCP_TOKEN, XCP_CA_CERT  defaults of --tls-dir, "
            f"--identity, --auth-token, --ca-cert\n\n"
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
    Command("watch", "print events as they happen (one line each; --json: one object "
                     "per line)", cmd_watch, add=_watch_args),
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
