"""xcp-master: the pool master process, and the one place that wires it.

`Master.start()` creates the pieces (store, liveness, metrics mirror,
forwarding, lifecycle, the servicers) and `_wire()` registers, in one place and
in order, who reacts to a host's liveness flip and to a store commit. Nothing
registers itself in its own constructor.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from typing import Callable

import grpc

from xcp_control import daemon
from xcp_control.master import api
from xcp_control.security import setup as security
from xcp_control.master.admission import LoopLag, watch_loop_lag
from xcp_control.master.announce import CALL_TIMEOUT as FOLLOW_TIMEOUT, LeaderAnnouncer
from xcp_control.master.events import EventHub
from xcp_control.master.forwarding import Forwarder
from xcp_control.master.ha import HaNode
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.master.lifecycle import Lifecycle
from xcp_control.master.listing import HostListing
from xcp_control.master.liveness import Liveness
from xcp_control.master.locks import OperationLocks
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.pool import Pool
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.ha_config import HaAnnouncer
from xcp_control.master.ha_quorum import QuorumProof
from xcp_control.master.ha_restart import Restarter
from xcp_control.master.prometheus import (MasterMetrics, PoolSources, ha_families,
                                           pool_families)
from xcp_control.master.reconcile import Reconciler
from xcp_control.rpc.server import (LenientRegistration, PortInUse, add_standard_services,
                                    bind, service_name)
from xcp_control.settings import MasterSettings
from xcp_control.master.sqlite_store import SqliteStore
from xcp_control.rpc.options import master_server_options
from xcp.v1 import (
    datamodel_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    host_service_pb2,
    host_service_pb2_grpc,
    liveness_service_pb2,
    liveness_service_pb2_grpc,
    pool_service_pb2,
    pool_service_pb2_grpc,
    slave_service_pb2,
    vm_service_pb2,
    vm_service_pb2_grpc,
)

log = logging.getLogger("xcp_control.master")

SERVICES = [
    service_name(host_service_pb2, "HostService"),
    service_name(vm_service_pb2, "VMService"),
    service_name(event_service_pb2, "EventService"),
    service_name(liveness_service_pb2, "LivenessService"),
    service_name(pool_service_pb2, "PoolService"),
]


class Master:
    """One master: build with settings, `await start()`, `await stop()`."""

    def __init__(self, settings: MasterSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings.validate()
        self.clock = clock
        # -- HA hook: several masters on etcd (None: one master on SQLite) --
        self.ha = HaNode.build(self.settings, clock)
        self.store = self.ha.store if self.ha else SqliteStore(
            settings.db_path, change_log_size=settings.change_log_size)
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
        sec = security.for_master(s.tls_dir)
        if self.ha:  # -- HA hook: calls passed on to the leader go as this master --
            self.ha.use_credentials(sec.channel_credentials)
        self._build(sec)
        self._wire()
        self._wire_metrics()
        # -- HA hook: routing last, so that authentication runs first --
        self._server = self._build_server([*sec.interceptors, *self._ha_interceptors()])
        self.address = bind(self._server, s.listen, sec.server_credentials)
        if s.token_listen:
            # The same services and interceptor, but TLS that asks for no client
            # certificate: a caller there is whoever its bearer token says.
            self.token_address = bind(self._server, s.token_listen, sec.token_server_credentials)
        if self.metrics is not None:
            self.metrics_address = self.metrics.serve(s.metrics_listen)
        await self.store.open()
        self.liveness.restore(self._stored_liveness(), self.clock())
        if self.ha:  # -- HA hook: campaign; lead only once elected --
            self.sessions.close()
            self.ha.start(s.advertise or self.address)
        else:
            self.restarter.lead()
        await add_standard_services(self._server, SERVICES)
        await self._server.start()
        self._tasks = [asyncio.create_task(self._reap(), name="reaper"),
                       asyncio.create_task(self.mirror.run(), name="metrics"),
                       asyncio.create_task(self.restarter.run(), name="ha-restart"),
                       asyncio.create_task(watch_loop_lag(self.loop_lag, self.clock,
                                                          s.reaper_tick), name="loop-lag")]
        log.info("master listening on %s, database %s", self.address,
                 f"etcd {s.etcd} {s.etcd_prefix}" if self.ha else s.db_path)
        if self.token_address:
            log.info("token endpoint (TLS, no client certificate) on %s", self.token_address)
        return self.address

    def _build(self, sec: security.Security) -> None:
        """Create the pieces; they know each other only through these arguments."""
        s = self.settings
        self.liveness = Liveness(s.report_deadline, s.grace, started_at=self.clock())
        self.mirror = MetricsMirror(self.store, self.liveness, self.clock,
                                    s.metrics_write_interval)
        self.hub = EventHub(self.store, s.watch_queue_size)
        self.locks = OperationLocks(self.clock)
        self.pool_ha = PoolHa(self.store, self.liveness)
        self.pool = Pool(self.store, self.liveness, self.mirror, self.locks, plan=self.pool_ha)
        self.listing = HostListing(self.store, self.liveness, self.mirror, self.clock)
        self.loop_lag = LoopLag(s.shed_lag)
        self.sessions = HeartbeatSessions(self.store, self.liveness, self.mirror,
                                          s.heartbeat_interval, self.clock, self.loop_lag,
                                          report_interval=s.report_interval)
        self.forwarder = Forwarder(self.store, self.liveness, s.contact_timeout, self.clock,
                                   credentials=sec.channel_credentials,
                                   fence=self.ha.fence if self.ha else None,
                                   ready=self.ha.ready if self.ha else None)
        self.liveness_servicer = api.LivenessServicer(self.sessions, hello_timeout=s.dead_after)
        # The leader notices a silent host at most dead_after after its last packet.
        self.ha_config = HaAnnouncer(self.store, self.pool_ha, detect_bound=s.dead_after,
                                     transport_bound=3 * max(s.heartbeat_interval, 0.5),
                                     acting=(lambda: self.ha.acting()) if self.ha
                                     else (lambda: True))
        self.lifecycle = Lifecycle(self.pool, self.forwarder, s.timeouts)
        self.quorum_proof = QuorumProof(self.liveness)
        self.restarter = Restarter(
            self.store, self.liveness, self.pool_ha, self.lifecycle, self.ha_config.fence_after,
            detect_bound=s.dead_after, clock=self.clock,
            proof=self.quorum_proof,
            transport_bound=self.ha_config.transport_bound,
            acting=(lambda: self.ha.acting()) if self.ha else (lambda: True),
            may_hold=self.ha_config.may_hold, armed=self.ha_config.armed)
        self.reconciler = Reconciler(self.store, self.locks, self.lifecycle.destroy_domain,
                                     self.sessions.request_domains, self.clock)
        # Several masters: a new leader calls its hosts over (announce.py).
        self.announcer = LeaderAnnouncer(
            lambda: [h.uuid for h in self.store.list("host") if self.liveness.is_live(h.uuid)],
            self.liveness_servicer.has_stream, self._follow_leader)

    def _wire(self) -> None:
        """Who reacts to what, in the order the reactions must run.

        A host's liveness flip (crash, reaper, goodbye, DeclareDead, or back):
        1. forwarding fails the calls in flight to a host gone down with
           HOST_OFFLINE and drops its channel: callers learn first, in
           milliseconds, and a returning host gets a fresh connection;
        2. the metrics mirror queues HostMetrics.live for the store: durable
           soon, but never in the way of step 1 (a disk write can be slow);
        3. heartbeat sessions forget the host's domain digest, so its next
           report is taken whole and reconciled;
        4. lifecycle re-disables a returning host the operator had disabled;
        5. the ListHosts answer refreshes the host's entry;
        6. HA's restarter notes when the leader lost the host (ha_restart.py):
           it acts only once the host must have fenced, never within the flip.
        Events (Watch) follow the store, not the flip: a flip reaches watchers
        when step 2's write commits, like every other change.

        A Hello that says the host fenced (HA): the restarter halts what the
        store still has running there, and marks the protected VMs, before
        the Hello's domain list is reconciled. A report answering report_now
        goes to HA's quorum proof (ha_quorum.py), which asks on the streams.

        A store commit: the event hub publishes it to watchers, then ListHosts
        learns whether its answer must be rebuilt. A report's figures (memory,
        last beat) reach ListHosts within a second, never one write per beat.
        """
        for on_flip in (self.forwarder.on_flip, self.mirror.on_flip, self.sessions.on_flip,
                        self.lifecycle.on_flip, self.listing.on_flip, self.restarter.on_flip):
            self.liveness.add_listener(on_flip)
        for on_commit in (self.hub.publish, self.listing.on_changes):
            self.store.add_listener(on_commit)
        self.mirror.add_report_listener(self.listing.on_report)
        self.sessions.add_domains_listener(self.reconciler.on_domains)
        # A host no longer counted live loses its stream: the slave then knows.
        self.sessions.add_not_live_listener(self.liveness_servicer.close)
        self.pool.add_forget_listener(self.forwarder.forget)
        # HA config on the heartbeat streams: in each Hello answer, pushed on change.
        self.sessions.ha = self.ha_config
        self.ha_config.push = self.liveness_servicer.push
        self.ha_config.open_hosts = self.liveness_servicer.open_hosts
        # HA's quorum proof asks on the streams and hears the answers in reports.
        self.quorum_proof.push = self.liveness_servicer.push
        self.sessions.vouch_listener = self.quorum_proof.on_vouch
        # A host back from a fence: its VMs died with it, restart the protected ones.
        self.sessions.fenced_listener = self.restarter.host_fenced
        # HA's fields of a Host record are the leader's: every Host put carries
        # them as last decided (another writer's copy may be older).
        self.store.add_put_hook("host", self.ha_config.keep_fields)
        self.store.add_listener(self.ha_config.on_changes)
        self.store.add_listener(self.restarter.on_changes)
        self.pool.add_forget_listener(self.ha_config.forget)
        if self.ha:
            # With several masters: the Hello answer carries our epoch (or
            # names the leader), and leading starts and stops the host side.
            self.sessions.gate = self.ha.fence
            self.ha.add_listener(self._on_leading)

    # -- HA hooks (several masters on etcd) ---------------------------------

    def _ha_interceptors(self) -> list:
        return [self.ha.router] if self.ha else []

    def _on_leading(self, acting: bool) -> None:
        """This master starts or stops acting as the pool's leader (stopping
        may be only a suspension: etcd's raft leader lost, renewals failing
        for a moment). The host side stops either way: an open heartbeat
        stream acknowledges its host (the slave's fence lease), and a master
        that is not sure of its lease acknowledges nothing; slaves are called
        back when it resumes. API calls in flight are the router's
        (routing.py): they wait out a suspension and stop when the term ends."""
        if acting:
            # A new leader gives every host the startup grace: a failover
            # marks no live host dead.
            self.liveness.restore(self._stored_liveness(), self.clock())
            self.sessions.reopen()
            self.ha_config.lead()  # what the hosts hold, as the last leader recorded it
            self.restarter.lead()
            self.announcer.start()
        else:
            self.announcer.stop()
            self.sessions.close()
            self.liveness_servicer.close_all()

    async def _follow_leader(self, host: str) -> bool:
        """SlaveService.FollowLeader on `host`: come to us (the Forwarder adds
        our epoch, and sends nothing once we stop acting)."""
        request = slave_service_pb2.FollowLeaderRequest(epoch=self.ha.fence(),
                                                        leader=self.ha.term.me)
        reply = await self.forwarder.call(host, "FollowLeader", request,
                                          operation="follow_leader", timeout=FOLLOW_TIMEOUT,
                                          budget=None)
        return reply.moved

    def describe_pool(self) -> datamodel_pb2.Pool:
        pool = datamodel_pb2.Pool(uuid=self.store.db_id)
        if self.ha:
            self.ha.describe(pool)
        else:
            pool.master = self.settings.advertise or self.address
            pool.masters.append(pool.master)
        self.pool_ha.describe(pool)
        return pool

    def _wire_metrics(self) -> None:
        """With --metrics-listen (master/prometheus.py): what the scrape reads,
        and the listeners that time forwarded calls and store commits; the API
        interceptor goes first in _build_server. Metrics react to nothing:
        they only read, so their place in _wire's order does not matter."""
        if not self.settings.metrics_listen:
            return
        metrics = self.metrics = MasterMetrics()
        sources = PoolSources(self.liveness, self.sessions, self.loop_lag, self.hub,
                              self.forwarder, lambda: len(self.store.list("host")))
        metrics.add_source(lambda: pool_families(sources))
        self.forwarder.add_call_listener(metrics.observe_forwarded)
        self.store.add_commit_observer(metrics.observe_commit)
        if self.ha:  # leader, epoch, elections; etcd request latency
            metrics.add_source(lambda: ha_families(self.ha.term, self.clock()))
            self.ha.etcd.observers.append(metrics.observe_etcd)

    def _stored_liveness(self) -> list[tuple[str, bool]]:
        return [(m.host, m.live) for m in self.store.list("host_metrics")]

    def _build_server(self, interceptors) -> grpc.aio.Server:
        s = self.settings
        options = master_server_options(s.max_message_bytes, s.heartbeat_interval, s.ping_timeout)
        counted = [self.metrics.api] if self.metrics is not None else []  # outermost: counts all
        # No interceptor unless TLS, HA or metrics need one: each costs every call
        # (BENCHMARKS.md).
        server = grpc.aio.server(options=options, interceptors=[*counted, *interceptors] or None)
        lenient = LenientRegistration(server)  # undecodable requests: INVALID_VALUE
        host_service_pb2_grpc.add_HostServiceServicer_to_server(
            api.HostServicer(self.pool, self.lifecycle, self.listing), lenient)
        vm_service_pb2_grpc.add_VMServiceServicer_to_server(
            api.VMServicer(self.pool, self.lifecycle), lenient)
        event_service_pb2_grpc.add_EventServiceServicer_to_server(
            api.EventServicer(self.hub), lenient)
        liveness_service_pb2_grpc.add_LivenessServiceServicer_to_server(
            self.liveness_servicer, server)
        pool_service_pb2_grpc.add_PoolServiceServicer_to_server(
            api.PoolServicer(self.describe_pool, self.pool_ha), server)
        return server

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_tick)
            if self.ha:  # -- HA hook: only an acting leader judges hosts --
                self.ha.tick()
                if not self.ha.acting():
                    continue
            for host in self.liveness.reap(self.clock()):
                log.warning("host %s missed its heartbeats (no report for %.1fs, though "
                            "its connection answers PINGs): not live",
                            host, self.settings.report_deadline)

    async def stop(self, reason: str = "shutdown", grace: float = 1.0) -> None:
        """Stop serving. Hosts keep their stored liveness: the streams this ends
        say nothing about them, and the next master judges them after its grace."""
        self.sessions.close()
        self.announcer.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ha:
            await self.ha.stop()
        if self._server is not None:
            await self._server.stop(grace)
        await self.forwarder.close()
        await self.store.close()
        if self.metrics is not None:
            await self.metrics.stop()


async def run(settings: MasterSettings) -> None:
    master = Master(settings)

    def started() -> None:
        if master.token_address:  # first: "listening on" tells readers the master is up
            print(f"xcp-master: token endpoint on {master.token_address}", flush=True)
        if master.metrics_address:
            print(f"xcp-master: metrics on http://{master.metrics_address}/metrics", flush=True)
        print(f"xcp-master: listening on {master.address}", flush=True)

    await daemon.serve_until_signalled(master, started)


def main(argv: list[str] | None = None) -> int:
    settings = daemon.parse_settings("xcp-master", "The xcp pool master.", MasterSettings, argv)
    daemon.configure_logging(settings.log_level)
    try:
        asyncio.run(run(settings))
    except PortInUse as exc:
        print(f"xcp-master: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:  # the database cannot be opened
        print(f"xcp-master: cannot open the database {settings.db_path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
