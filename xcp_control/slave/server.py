"""xcp-slave: one per host. Serves SlaveService (the domain operations the
master forwards) over a hypervisor backend, and keeps a heartbeat stream to
the master.

Start-up: load or create the host uuid in the state dir, bind the server (port
0 picks a free one), print one line `xcp-slave: host <uuid> listening on
<host:port>` to stdout, then heartbeat. SIGTERM or SIGINT: Goodbye to the
master, graceful server stop, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import grpc

from xcp.v1 import slave_service_pb2 as pb
from xcp.v1 import slave_service_pb2_grpc as pb_grpc
from xcp_control.rpc import credentials
from xcp_control.security import auth, pki
from xcp_control import errors
from xcp_control.errors import rpc_method
from xcp_control.slave.heartbeat import HeartbeatClient, HostIdentity
from xcp_control.slave.hypervisor import Hypervisor, SimulatedHypervisor
from xcp_control.slave.prometheus import SlaveMetrics
from xcp_control.rpc.server import DecodeGuard, PortInUse, add_standard_services, bind
from xcp_control.settings import SettingsError, SlaveSettings
from xcp_control.rpc.options import server_options

log = logging.getLogger(__name__)

PROG = "xcp-slave"
HOST_UUID_FILE = "host-uuid"
SLAVE_SERVICE = pb.DESCRIPTOR.services_by_name["SlaveService"].full_name
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # requests to a slave are tiny; this only bounds abuse
_STOP_GRACE = 2.0  # seconds in-flight operations get to finish at shutdown


class StartupError(Exception):
    """The slave cannot start (port taken, unreadable state); the message says why."""


# -- SlaveService -------------------------------------------------------------


def _vm_uuid(request) -> str:
    if not request.vm_uuid:
        raise errors.invalid_value("vm_uuid", request.vm_uuid)
    return request.vm_uuid


class SlaveServicer(pb_grpc.SlaveServiceServicer):
    """Proto in, hypervisor call, proto out; errors come from the backend."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self._hv = hypervisor

    @rpc_method
    async def StartDomain(self, request: pb.StartDomainRequest, context) -> pb.Domain:
        vm_uuid = _vm_uuid(request)
        if request.memory <= 0:
            raise errors.invalid_value("memory", request.memory)
        if request.vcpus < 1:
            raise errors.invalid_value("vcpus", request.vcpus)
        domain = await self._hv.start(vm_uuid, request.memory, request.vcpus, request.paused)
        return domain.to_proto()

    @rpc_method
    async def ShutdownDomain(self, request: pb.ShutdownDomainRequest, context) -> pb.Domain:
        return (await self._hv.shutdown(_vm_uuid(request), request.force)).to_proto()

    @rpc_method
    async def RebootDomain(self, request: pb.RebootDomainRequest, context) -> pb.Domain:
        return (await self._hv.reboot(_vm_uuid(request), request.force)).to_proto()

    @rpc_method
    async def PauseDomain(self, request: pb.PauseDomainRequest, context) -> pb.Domain:
        return (await self._hv.pause(_vm_uuid(request))).to_proto()

    @rpc_method
    async def UnpauseDomain(self, request: pb.UnpauseDomainRequest, context) -> pb.Domain:
        return (await self._hv.unpause(_vm_uuid(request))).to_proto()

    @rpc_method
    async def DestroyDomain(self, request: pb.DestroyDomainRequest,
                            context) -> pb.DestroyDomainResponse:
        await self._hv.destroy(_vm_uuid(request))
        return pb.DestroyDomainResponse()

    @rpc_method
    async def ListDomains(self, request: pb.ListDomainsRequest, context) -> pb.ListDomainsResponse:
        domains = await self._hv.list_domains()
        return pb.ListDomainsResponse(domains=[d.to_proto() for d in domains],
                                      memory_total=self._hv.memory_total,
                                      memory_free=self._hv.memory_free)

    @rpc_method
    async def SetEnabled(self, request: pb.SetEnabledRequest, context) -> pb.SetEnabledResponse:
        return pb.SetEnabledResponse(enabled=await self._hv.set_enabled(request.enabled))


# -- host identity ------------------------------------------------------------


def load_or_create_host_uuid(state_dir: Path) -> str:
    """The host uuid kept in state_dir/host-uuid, created on first start.
    Written atomically (tmp, fsync, rename, fsync dir): a crash mid-write must
    never leave a host without its identity or with half of one."""
    path = state_dir / HOST_UUID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return _create_host_uuid(state_dir, path)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise StartupError(f"{path} does not hold a uuid ({text[:40]!r}); "
                           "remove it to give this host a new identity") from None


def _create_host_uuid(state_dir: Path, path: Path) -> str:
    state_dir.mkdir(parents=True, exist_ok=True)
    host_uuid = str(uuid.uuid4())
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{HOST_UUID_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(host_uuid + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return host_uuid


# -- server -------------------------------------------------------------------


def _security(settings: SlaveSettings, host_uuid: str):
    """(server credentials, interceptors, channel credentials) for this host;
    all None / empty without --tls-dir."""
    if not settings.tls_dir:
        return None, [], None
    tlsdir = pki.TlsDir(settings.tls_dir)
    paths = tlsdir.host(host_uuid)
    if not paths.cert.exists():
        raise StartupError(f"no certificate for host {host_uuid} in {settings.tls_dir}: "
                           f"issue one with `xcp cert-issue --kind host --name {host_uuid}`")
    guard = auth.AuthInterceptor(auth.Authoriser(None, auth.slave_policy))
    return (credentials.server_credentials(tlsdir, paths), [guard],
            credentials.channel_credentials(tlsdir, paths))


async def _start_server(settings: SlaveSettings, hypervisor: Hypervisor,
                        credentials, interceptors):
    """A started grpc.aio server, its health servicer and the bound address."""
    # Tight keepalive: a call the master abandoned (it lost us for
    # contact_timeout) is cancelled here within seconds, not after a TCP timeout.
    server = grpc.aio.server(options=server_options(_MAX_MESSAGE_BYTES, keepalive_s=2.0,
                                                    ping_timeout_s=1.0),
                             interceptors=[DecodeGuard(), *interceptors])
    pb_grpc.add_SlaveServiceServicer_to_server(SlaveServicer(hypervisor), server)
    try:
        bound = bind(server, settings.listen, credentials)
    except PortInUse as exc:
        raise StartupError(str(exc)) from None
    health_servicer = await add_standard_services(server, [SLAVE_SERVICE])
    await server.start()
    return server, health_servicer, bound


async def _stop_server(server, health_servicer) -> None:
    await health_servicer.enter_graceful_shutdown()
    await server.stop(_STOP_GRACE)


def _stop_on_signals() -> asyncio.Future:
    """A future resolved with the signal's name (e.g. "SIGTERM") on the first
    SIGTERM or SIGINT; later ones are ignored while we stop."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future = loop.create_future()

    def request(sig: signal.Signals) -> None:
        if not stop.done():
            log.info("received %s: stopping", sig.name)
            stop.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request, sig)
    return stop


async def serve(settings: SlaveSettings, stop: asyncio.Future | None = None) -> None:
    """Run a slave until `stop` resolves (with the Goodbye reason), or, when
    no future is given, until SIGTERM or SIGINT."""
    if stop is None:
        stop = _stop_on_signals()
    host_uuid = load_or_create_host_uuid(Path(settings.state_dir))
    hypervisor = SimulatedHypervisor.from_settings(host_uuid, settings)
    server_credentials, interceptors, channel_credentials = _security(settings, host_uuid)
    metrics = SlaveMetrics(hypervisor) if settings.metrics_listen else None
    counted = [metrics.calls] if metrics is not None else []
    server, health_servicer, bound = await _start_server(settings, hypervisor,
                                                         server_credentials,
                                                         [*counted, *interceptors])
    try:
        if metrics is not None:
            metrics_address = _serve_metrics(metrics, settings.metrics_listen)
            print(f"{PROG}: metrics on http://{metrics_address}/metrics", flush=True)
        print(f"{PROG}: host {host_uuid} listening on {bound}", flush=True)
        identity = HostIdentity(host_uuid, _name_label(settings), settings.advertise or bound)
        log.info("host %s (%s) serving on %s, master %s", host_uuid, identity.name_label,
                 bound, settings.master)
        client = HeartbeatClient(settings.master, identity, hypervisor,
                                 reconnect_cap=settings.reconnect_cap,
                                 credentials=channel_credentials)
        if metrics is not None:
            metrics.heartbeat = client
        beating = asyncio.create_task(client.run())
        try:
            await stop
        finally:
            await client.stop(reason=_stop_reason(stop))
            beating.cancel()
    finally:
        await _stop_server(server, health_servicer)
        if metrics is not None:
            await metrics.stop()
    log.info("stopped")


def _serve_metrics(metrics: SlaveMetrics, listen: str) -> str:
    try:
        return metrics.serve(listen)
    except PortInUse as exc:
        raise StartupError(str(exc)) from None


def _stop_reason(stop: asyncio.Future) -> str:
    if stop.done() and not stop.cancelled() and stop.exception() is None:
        return str(stop.result())
    return "shutdown"


def _name_label(settings: SlaveSettings) -> str:
    return settings.name or Path(settings.state_dir).resolve().name


# -- command line -------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(text: str) -> int:
    """Bytes from "68719476736", "64G", "64GiB", "512M" (binary multiples)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64G, 512M, 1073741824)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = SlaveSettings()
    p = argparse.ArgumentParser(prog=PROG, description="xcp host agent: serves domain "
                                "operations and heartbeats to the master.")
    p.add_argument("--master", default=d.master, metavar="HOST:PORT",
                   help=f"the master's endpoint (default {d.master})")
    p.add_argument("--listen", default=d.listen, metavar="HOST:PORT",
                   help=f"where SlaveService listens; port 0 picks a free one (default {d.listen})")
    p.add_argument("--advertise", default=d.advertise, metavar="HOST:PORT",
                   help="address reported to the master (default: the bound listen address)")
    p.add_argument("--name", default=d.name, help="name_label of this host "
                   "(default: the state dir's name)")
    p.add_argument("--state-dir", default=d.state_dir, metavar="DIR",
                   help=f"where the host uuid persists (default {d.state_dir})")
    p.add_argument("--memory", type=parse_bytes, default=d.memory, metavar="BYTES",
                   help="memory domains may use, e.g. 64G (default 64G)")
    for flag, attr, what in (
            ("--boot-time", "boot_time", "to start a domain"),
            ("--clean-shutdown-time", "clean_shutdown_time", "for a clean shutdown"),
            ("--hard-shutdown-time", "hard_shutdown_time", "for a hard shutdown"),
            ("--pause-time", "pause_time", "to pause or unpause"),
            ("--reconnect-cap", "reconnect_cap", "at most between reconnects to the master")):
        default = getattr(d, attr)
        p.add_argument(flag, dest=attr, type=_seconds, default=default, metavar="S",
                       help=f"seconds {what} (default {default})")
    p.add_argument("--tls-dir", default=d.tls_dir, metavar="DIR",
                   help="pool certificates: speak only mutual TLS (default: plaintext)")
    p.add_argument("--metrics-listen", default=d.metrics_listen, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level")
    return p


def settings_from_args(args: argparse.Namespace) -> SlaveSettings:
    return SlaveSettings(
        master=args.master, listen=args.listen, name=args.name, state_dir=args.state_dir,
        advertise=args.advertise, memory=args.memory, boot_time=args.boot_time,
        clean_shutdown_time=args.clean_shutdown_time,
        hard_shutdown_time=args.hard_shutdown_time, pause_time=args.pause_time,
        reconnect_cap=args.reconnect_cap, tls_dir=args.tls_dir,
        metrics_listen=args.metrics_listen)


def main(argv: list[str] | None = None) -> int:
    """The `xcp-slave` console script. Exit codes: 0 clean stop, 1 cannot
    start, 2 bad flags or settings."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args).validate()
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except (StartupError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
