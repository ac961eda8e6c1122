"""xcp-slave: one per host. Serves SlaveService (the domain operations the
master forwards) over a hypervisor backend, and keeps a heartbeat stream to
the master.

Start-up: load or create the host uuid in the state dir, bind the server (port
0 picks a free one), print one line `xcp-slave: host <uuid> listening on
<host:port>` to stdout, then heartbeat. SIGTERM or SIGINT: Goodbye to the
master, graceful server stop, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import grpc

from xcp.v1 import slave_service_pb2_grpc as pb_grpc
from xcp_control import daemon
from xcp_control.rpc.options import heartbeat_transport_bound, server_options
from xcp_control.rpc.server import DecodeGuard, PortInUse, add_standard_services, bind
from xcp_control.security import setup as security
from xcp_control.settings import SlaveSettings
from xcp_control.slave.fencing import EpochFence, FenceInterceptor
from xcp_control.slave.ha_guard import GuardInterceptor, SelfFencing, peer_asker
from xcp_control.slave.heartbeat import HeartbeatClient, HostIdentity
from xcp_control.slave.backends import BackendUnavailable, make_hypervisor
from xcp_control.slave.hypervisor import Hypervisor
from xcp_control.slave.identity import IdentityError, load_or_create_host_uuid
from xcp_control.slave.prometheus import SlaveMetrics, fence_families, watchdog_families
from xcp_control.slave.self_fence import HaConfig
from xcp_control.slave.service import SLAVE_SERVICE, SlaveServicer
from xcp_control.slave.watchdog import WatchdogKeeper, WatchdogRefused, check_device, keeper_for

log = logging.getLogger(__name__)

PROG = "xcp-slave"
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # requests to a slave are tiny; this only bounds abuse
_STOP_GRACE = 2.0  # seconds in-flight operations get to finish at shutdown


class StartupError(Exception):
    """The slave cannot start (port taken, unreadable state); the message says why."""


class Slave:
    """One host agent: build with settings, `await start()`, `await stop(reason)`."""

    def __init__(self, settings: SlaveSettings) -> None:
        self.settings = settings.validate()
        self.host_uuid = ""
        self.address = ""  # HOST:PORT SlaveService is bound to
        self.hypervisor: Hypervisor | None = None
        self._server: grpc.aio.Server | None = None
        self._health = None
        self._client: HeartbeatClient | None = None
        self._beating: asyncio.Task | None = None
        self._guarding: asyncio.Task | None = None
        self._watching: asyncio.Task | None = None
        self.guard: SelfFencing | None = None  # HA self-fencing (ha_guard.py)
        self.watchdog = None  # the host watchdog's keeper (watchdog.py)
        self.fence = EpochFence()  # several masters: the newest leader epoch seen
        self.metrics: SlaveMetrics | None = None  # with --metrics-listen
        self.metrics_address = ""  # HOST:PORT of /metrics, if served

    async def start(self) -> str:
        """Serve SlaveService and start heartbeating; the bound HOST:PORT."""
        s = self.settings
        try:
            self.host_uuid = load_or_create_host_uuid(Path(s.state_dir))
            sec = security.for_host(s.tls_dir, self.host_uuid)
            if s.watchdog_device:
                check_device(s.watchdog_device)  # exists; opening it would arm it
            self.hypervisor = await make_hypervisor(self.host_uuid, s)
        except (IdentityError, security.MissingCertificate, BackendUnavailable,
                WatchdogRefused) as exc:
            raise StartupError(str(exc)) from None
        if s.metrics_listen:
            self.metrics = SlaveMetrics(self.hypervisor)
        self.guard = SelfFencing(self.host_uuid, self.hypervisor, self._connected_since,
                                 self._transport_bound, peer_asker(sec.channel_credentials),
                                 time.monotonic, rejoin=self._rejoin)
        self.watchdog = keeper_for(s, self.guard)
        await self._serve(sec)
        identity = HostIdentity(self.host_uuid, self.name_label, s.advertise or self.address)
        log.info("host %s (%s) serving on %s, master %s", self.host_uuid, identity.name_label,
                 self.address, s.master)
        self._client = HeartbeatClient(s.master, identity, self.hypervisor,
                                       reconnect_cap=s.reconnect_cap,
                                       interval=s.heartbeat_interval,
                                       credentials=sec.channel_credentials,
                                       on_epoch=self.fence.seen,
                                       fence_after=s.fence_after, on_ha=self._on_ha,
                                       fenced=lambda: self.guard.fenced)
        self._beating = asyncio.create_task(self._client.run(), name="heartbeat")
        self._guarding = asyncio.create_task(self.guard.run(), name="self-fence")
        if isinstance(self.watchdog, WatchdogKeeper):
            self._watching = asyncio.create_task(self.watchdog.run(), name="watchdog")
        if self.metrics is not None:
            self.metrics.heartbeat = self._client
            self.metrics.add_source(lambda: fence_families(self.guard))
            if isinstance(self.watchdog, WatchdogKeeper):
                self.metrics.add_source(lambda: watchdog_families(self.watchdog))
            try:
                self.metrics_address = self.metrics.serve(s.metrics_listen)
            except PortInUse as exc:
                raise StartupError(str(exc)) from None
        return self.address

    def _on_ha(self, config: HaConfig) -> None:
        """The leader's HA config: the lease first (receiving it confirms it),
        then the watchdog, which arms on the lease it just confirmed."""
        self.guard.configure(config)
        self.watchdog.set_ha_enabled(config.enabled)

    def _connected_since(self) -> float | None:
        return self._client.connected_since if self._client is not None else None

    def _rejoin(self) -> None:
        if self._client is not None:
            self._client.retry_now()

    def _follow_leader(self, epoch: int, leader: str) -> bool:
        """A new leader called (SlaveService.FollowLeader): an older epoch is
        refused (STALE_MASTER), a current one moves the heartbeat stream."""
        self.fence.admit(epoch)
        return self._client is not None and self._client.reconnect_to(leader)

    def _transport_bound(self) -> float:
        """How long our heartbeat channel may go without hearing the master
        before it closes (HeartbeatClient.transport_bound)."""
        if self._client is None:
            return heartbeat_transport_bound(self.settings.heartbeat_interval)
        return self._client.transport_bound

    @property
    def name_label(self) -> str:
        return self.settings.name or Path(self.settings.state_dir).resolve().name

    async def _serve(self, sec: security.Security) -> None:
        # Tight keepalive: a call the master abandoned (it lost us for
        # contact_timeout) is cancelled here within seconds, not after a TCP timeout.
        server = grpc.aio.server(options=server_options(_MAX_MESSAGE_BYTES, keepalive_s=2.0,
                                                        ping_timeout_s=1.0),
                                 interceptors=[*self._counted(), DecodeGuard(), *sec.interceptors,
                                               FenceInterceptor(self.fence),
                                               GuardInterceptor(self.guard)])
        pb_grpc.add_SlaveServiceServicer_to_server(
            SlaveServicer(self.hypervisor, self.guard.peer_status, self._follow_leader), server)
        try:
            self.address = bind(server, self.settings.listen, sec.server_credentials)
        except PortInUse as exc:
            raise StartupError(str(exc)) from None
        self._health = await add_standard_services(server, [SLAVE_SERVICE])
        await server.start()
        self._server = server

    async def _domains_left(self) -> bool:
        """Whether domains may outlive us (unknown counts as yes: the safe side)."""
        try:
            return bool(await self.hypervisor.list_domains())
        except Exception:  # noqa: BLE001 - e.g. libvirtd gone: keep the watchdog running
            return True

    def _counted(self) -> list:
        """The metrics interceptor, outermost so that it counts every call."""
        return [self.metrics.calls] if self.metrics is not None else []

    async def stop(self, reason: str = "shutdown") -> None:
        """Goodbye to the master (it marks us down at once), then stop serving."""
        if self._client is not None:
            await self._client.stop(reason=reason)
        for task in (self._beating, self._guarding, self._watching):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(_STOP_GRACE)
        if self.watchdog is not None and self.watchdog.running:
            self.watchdog.stop(domains_left=await self._domains_left())
        if self.hypervisor is not None:
            await self.hypervisor.close()  # domains keep running: a restarted slave adopts them
        if self.metrics is not None:
            await self.metrics.stop()


def main(argv: list[str] | None = None) -> int:
    """The `xcp-slave` console script. Exit codes: 0 clean stop, 1 cannot
    start, 2 bad flags or settings."""
    settings = daemon.parse_settings(PROG, "xcp host agent: serves domain operations and "
                                     "heartbeats to the master.", SlaveSettings, argv)
    daemon.configure_logging(settings.log_level)
    slave = Slave(settings)

    def started() -> None:
        if slave.metrics_address:  # first: the host line tells readers the slave is up
            print(f"{PROG}: metrics on http://{slave.metrics_address}/metrics", flush=True)
        print(f"{PROG}: host {slave.host_uuid} listening on {slave.address}", flush=True)

    try:
        asyncio.run(daemon.serve_until_signalled(slave, started))
    except (StartupError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
