"""xcp-master: the pool master process.

Wires the store, liveness, metrics mirror, forwarding and the servicers into
one grpc.aio server, runs the reaper, and handles start-up and shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
import time
from typing import Callable

import grpc

from xcp_control.master import api

from xcp_control.rpc import credentials

from xcp_control.security import auth, pki
from xcp_control.master.admission import LoopLag, watch_loop_lag
from xcp_control.master.events import EventHub
from xcp_control.master.forwarding import Forwarder
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.master.lifecycle import Lifecycle
from xcp_control.master.listing import HostListing
from xcp_control.master.liveness import Liveness
from xcp_control.master.locks import OperationLocks
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.pool import Pool
from xcp_control.master.prometheus import MasterMetrics, PoolSources, pool_families
from xcp_control.rpc.server import DecodeGuard, add_standard_services, bind, service_name
from xcp_control.settings import MasterSettings, SettingsError
from xcp_control.master.sqlite_store import SqliteStore
from xcp_control.rpc.options import server_options
from xcp.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    host_service_pb2,
    host_service_pb2_grpc,
    liveness_service_pb2,
    liveness_service_pb2_grpc,
    vm_service_pb2,
    vm_service_pb2_grpc,
)

log = logging.getLogger("xcp_control.master")

SERVICES = [
    service_name(host_service_pb2, "HostService"),
    service_name(vm_service_pb2, "VMService"),
    service_name(event_service_pb2, "EventService"),
    service_name(liveness_service_pb2, "LivenessService"),
]


class Master:
    """One master: build with settings, `await start()`, `await stop()`."""

    def __init__(self, settings: MasterSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings.validate()
        self.clock = clock
        self.store = SqliteStore(settings.db_path, change_log_size=settings.change_log_size)
        self.address = ""
        self.token_address = ""  # HOST:PORT of the token endpoint, if there is one
        self.metrics: MasterMetrics | None = None  # with --metrics-listen
        self.metrics_address = ""  # HOST:PORT of /metrics, if served
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> str:
        """Bind, open the database, serve; the bound HOST:PORT. Binding comes
        first so that a master refused its port touches no database file."""
        s = self.settings
        self.liveness = Liveness(s.dead_after, s.grace, started_at=self.clock())
        self.mirror = MetricsMirror(self.store, self.liveness, self.clock,
                                    s.metrics_write_interval)
        self.hub = EventHub(self.store, s.watch_queue_size)
        self.locks = OperationLocks()
        self.pool = Pool(self.store, self.liveness, self.mirror, self.locks)
        self.listing = HostListing(self.store, self.liveness, self.mirror, self.clock)
        self.loop_lag = LoopLag(s.shed_lag)
        self.sessions = HeartbeatSessions(self.store, self.liveness, self.mirror,
                                          s.heartbeat_interval, self.clock, self.loop_lag)
        server_credentials, interceptors, channel_credentials = self._security()
        self.forwarder = Forwarder(self.store, self.liveness, s.contact_timeout, self.clock,
                                   credentials=channel_credentials)
        self.lifecycle = Lifecycle(self.pool, self.forwarder, s.timeouts, self.sessions)
        self._wire_metrics()
        self._server = self._build_server(interceptors)
        self.address = bind(self._server, s.listen, server_credentials)
        self.token_address = self._bind_token_endpoint()
        if self.metrics is not None:
            self.metrics_address = self.metrics.serve(s.metrics_listen)
        await self.store.open()
        self.liveness.restore(self._stored_liveness(), self.clock())
        await add_standard_services(self._server, SERVICES)
        await self._server.start()
        self._tasks = [asyncio.create_task(self._reap(), name="reaper"),
                       asyncio.create_task(self.mirror.run(), name="metrics"),
                       asyncio.create_task(watch_loop_lag(self.loop_lag, self.clock,
                                                          s.reaper_tick), name="loop-lag")]
        log.info("master listening on %s, database %s", self.address, s.db_path)
        if self.token_address:
            log.info("token endpoint (TLS, no client certificate) on %s", self.token_address)
        return self.address

    # -- metrics (master/prometheus.py): everything they hook, in one place --
    def _wire_metrics(self) -> None:
        """With --metrics-listen: scrape-time sources, then the listeners that
        time forwarded calls and commits; the API interceptor is added by
        _build_server."""
        if not self.settings.metrics_listen:
            return
        metrics = self.metrics = MasterMetrics()
        sources = PoolSources(self.liveness, self.sessions, self.loop_lag, self.hub,
                              self.forwarder, lambda: len(self.store.list("host")))
        metrics.add_source(lambda: pool_families(sources))
        self.forwarder.add_call_listener(metrics.observe_forwarded)
        self.store.add_commit_observer(metrics.observe_commit)
    # -- end of metrics --

    def _stored_liveness(self) -> list[tuple[str, bool]]:
        return [(m.host, m.live) for m in self.store.list("host_metrics")]

    def _security(self):
        """(server credentials, interceptors, channel credentials to slaves);
        None / empty without a TLS directory."""
        if not self.settings.tls_dir:
            return None, [], None
        tlsdir = pki.TlsDir(self.settings.tls_dir)
        authoriser = auth.Authoriser(auth.TokenBook(tlsdir), auth.master_policy)
        return (credentials.server_credentials(tlsdir, tlsdir.master()),
                [auth.AuthInterceptor(authoriser)],
                credentials.channel_credentials(tlsdir, tlsdir.master()))

    def _bind_token_endpoint(self) -> str:
        """Bind the token endpoint, if asked for: the same services and the same
        interceptor, but the TLS asks for no client certificate, so a caller
        there is whoever its bearer token says (grpcio cannot make a client
        certificate optional on one port)."""
        if not self.settings.token_listen:
            return ""
        tlsdir = pki.TlsDir(self.settings.tls_dir)
        return bind(self._server, self.settings.token_listen,
                    credentials.token_server_credentials(tlsdir, tlsdir.master()))

    def _build_server(self, interceptors) -> grpc.aio.Server:
        counted = [self.metrics.api] if self.metrics is not None else []  # outermost: counts all
        server = grpc.aio.server(options=server_options(self.settings.max_message_bytes),
                                 interceptors=[*counted, DecodeGuard(), *interceptors])
        host_service_pb2_grpc.add_HostServiceServicer_to_server(
            api.HostServicer(self.pool, self.lifecycle, self.listing), server)
        vm_service_pb2_grpc.add_VMServiceServicer_to_server(
            api.VMServicer(self.pool, self.lifecycle), server)
        event_service_pb2_grpc.add_EventServiceServicer_to_server(
            api.EventServicer(self.hub), server)
        liveness_service_pb2_grpc.add_LivenessServiceServicer_to_server(
            api.LivenessServicer(self.sessions, hello_timeout=self.settings.dead_after), server)
        return server

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_tick)
            for host in self.liveness.reap(self.clock()):
                log.warning("host %s missed its heartbeats for %.1fs: not live",
                            host, self.settings.dead_after)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving. Hosts keep their stored liveness: the streams this ends
        say nothing about them, and the next master judges them after its grace."""
        self.sessions.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(grace)
        await self.forwarder.close()
        await self.store.close()
        if self.metrics is not None:
            await self.metrics.stop()


def parse_args(argv: list[str] | None) -> MasterSettings:
    d = MasterSettings()
    p = argparse.ArgumentParser(prog="xcp-master", description="The xcp pool master.")
    p.add_argument("--listen", default=d.listen, help="HOST:PORT to serve on (default %(default)s)")
    p.add_argument("--db", default=d.db_path, help="SQLite pool database (default %(default)s)")
    p.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval,
                   metavar="S", help="seconds between heartbeats (default %(default)s)")
    p.add_argument("--dead-after", type=float, default=d.dead_after, metavar="S",
                   help="seconds of silence before a host is not live (default %(default)s)")
    p.add_argument("--contact-timeout", type=float, default=d.contact_timeout, metavar="S",
                   help="longest wait for a silent host (default %(default)s)")
    p.add_argument("--startup-grace", type=float, default=None, metavar="S",
                   help="seconds hosts keep their stored state after start (default: dead-after)")
    p.add_argument("--tls-dir", default=d.tls_dir, metavar="DIR",
                   help="pool certificates (xcp pool-init): mutual TLS only (default: plaintext)")
    p.add_argument("--token-listen", default=d.token_listen, metavar="HOST:PORT",
                   help="also serve here with TLS but no client certificate: callers send a "
                        "bearer token (xcp token-issue); needs --tls-dir (default: none)")
    p.add_argument("--shed-lag", type=float, default=d.shed_lag, metavar="S",
                   help="refuse new heartbeat streams (TOO_BUSY) while the event loop lags "
                        "more than this; 0 never (default %(default)s)")
    p.add_argument("--metrics-listen", default=d.metrics_listen, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return MasterSettings(listen=a.listen, db_path=a.db, heartbeat_interval=a.heartbeat_interval,
                          dead_after=a.dead_after, contact_timeout=a.contact_timeout,
                          startup_grace=a.startup_grace, tls_dir=a.tls_dir,
                          token_listen=a.token_listen, shed_lag=a.shed_lag,
                          metrics_listen=a.metrics_listen)


async def run(settings: MasterSettings) -> None:
    master = Master(settings)
    address = await master.start()
    if master.token_address:  # first: "listening on" tells readers the master is up
        print(f"xcp-master: token endpoint on {master.token_address}", flush=True)
    if master.metrics_address:
        print(f"xcp-master: metrics on http://{master.metrics_address}/metrics", flush=True)
    print(f"xcp-master: listening on {address}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await master.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv).validate()
        asyncio.run(run(settings))
    except SettingsError as exc:
        print(f"xcp-master: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:  # the database cannot be opened
        print(f"xcp-master: cannot open the database {settings.db_path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
