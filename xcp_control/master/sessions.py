"""The master's side of heartbeat streams: registration, reports, goodbyes.

`HeartbeatSessions` holds the logic; the LivenessService servicer only moves
messages. Whether a host is silent is the transport's business (the master's
gRPC core PINGs each connection, liveness.py); Python sees a host's reports
only, one per report_interval or on a change, so the per-report path stays
lean (one dict move in Liveness, a digest comparison).
"""

from __future__ import annotations

import logging
import time
import uuid as uuid_module
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from xcp_control import validation
from xcp_control.master.admission import LoopLag
from xcp_control.security.auth import CALLER
from xcp_control import errors
from xcp_control.master import liveness as liveness_module
from xcp_control.master.liveness import Liveness
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.ha_config import HaAnnouncer
from xcp_control.master.store import Put, Store
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2, liveness_service_pb2 as pb, slave_service_pb2

log = logging.getLogger(__name__)

DomainsListener = Callable[[str, Sequence[slave_service_pb2.Domain]], None]


@dataclass
class Session:
    """One open heartbeat stream."""

    host: str
    stream: int
    epoch: int = 0  # the leader's epoch the stream was opened under (0: one master)


class HeartbeatSessions:
    """Turns heartbeat messages into liveness, metrics and domain reports."""

    def __init__(self, store: Store, liveness: Liveness, mirror: MetricsMirror,
                 interval: float, clock: Callable[[], float],
                 loop_lag: LoopLag | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 report_interval: float | None = None) -> None:
        self._store = store
        self._loop_lag = loop_lag
        self._liveness = liveness
        self._mirror = mirror
        self._interval_ms = int(interval * 1000)
        # 0 tells the slave to report once per interval (the pre-PING protocol)
        self._report_ms = int((report_interval or 0) * 1000)
        self._clock = clock
        self._wall = wall_clock
        self._digests: dict[str, str] = {}  # host -> digest of the domain list we hold
        self._domain_listeners: list[DomainsListener] = []
        self._not_live_listeners: list[Callable[[str], None]] = []
        self._hypervisor_unavailable: set[str] = set()  # hosts whose reports say so
        self._closing = False
        # With several masters: the epoch to answer a Hello with, or
        # HOST_IS_SLAVE naming the leader when this master does not lead.
        self.gate: Callable[[], int] | None = None
        # The pool's HA config for each Hello answer (ha_config.py), when wired.
        self.ha: HaAnnouncer | None = None
        # Told (host, seconds) of each report answering report_now (HA's quorum
        # proof, ha_quorum.py), when wired.
        self.vouch_listener: Callable[[str, float], None] | None = None
        # Awaited with the host of each Hello that says it fenced, before its
        # domains are taken (HA: ha_restart.Restarter.host_fenced), when wired.
        self.fenced_listener: Callable[[str], Awaitable[None]] | None = None
        # Plain counts the metrics collector reads at scrape time: an int
        # increment is the whole cost on the beat path (no lock, no label lookup).
        self.reports = 0  # Hellos and beats taken
        self.sheds = 0  # new streams refused TOO_BUSY

    def add_domains_listener(self, listener: DomainsListener) -> None:
        """Call listener(host, domains) with each full domain list a host sends."""
        self._domain_listeners.append(listener)

    def add_not_live_listener(self, listener: Callable[[str], None]) -> None:
        """Call listener(host) whenever a host stops being live, for whatever
        reason (stream ended, report backstop, DeclareDead)."""
        self._not_live_listeners.append(listener)

    def admit(self) -> None:
        """A new stream is about to start: TOO_BUSY while the master's event
        loop lags, before any work is done for it (admission.py)."""
        lag = self._loop_lag
        if lag is not None and lag.busy:
            self.sheds += 1
            raise errors.too_busy(f"event loop {lag.lag:.2f}s behind: "
                                              f"no new heartbeat streams for now")

    async def hello(self, hello: pb.Hello) -> tuple[Session, pb.HeartbeatResponse]:
        """Register or update the host, then open its session."""
        host = validation.uuid("hello.host_uuid", hello.host_uuid)
        epoch = self.gate() if self.gate is not None else 0
        self._check_caller(host)
        fence_after_ms = 0
        if self.ha is not None:
            self.ha.keep(host, hello)
            fence_after_ms = round(self.ha.fence_after(host) * 1000)
        await self._register(host, hello, fence_after_ms)  # with HA's fields (ha_config.py)
        if hello.fenced and self.fenced_listener is not None:
            await self.fenced_listener(host)
        session = Session(host, self._liveness.attach(host), epoch)
        self.reports += 1
        self._liveness.beat(host, self._clock())
        self._mirror.report(host, hello.memory_free, self._wall(), hello.memory_total)
        log.info("host %s (%s) joined from %s", host, hello.name_label, hello.address)
        answer = pb.HeartbeatResponse(interval_ms=self._interval_ms,
                                      report_interval_ms=self._report_ms, epoch=epoch)
        if self.ha is not None:
            self.ha.fill(host, answer)
        if not self._hypervisor_down(host, hello.hypervisor_unavailable):
            self._take_domains(host, hello.domains_digest, hello.domains)
            answer.domains_ack = hello.domains_digest
        return session, answer

    @staticmethod
    def _check_caller(host: str) -> None:
        """With TLS, a host may heartbeat only as the host its certificate names."""
        caller = CALLER.get()
        if caller is not None and caller.name != host:
            log.warning("refused a heartbeat from %s claiming to be host %s", caller.name, host)
            raise errors.rbac_permission_denied(caller.role, f"heartbeat as host {host}")

    def beat(self, session: Session, beat: pb.Beat) -> pb.HeartbeatResponse | None:
        """A report; the answer, when the slave needs one."""
        if not self._liveness.is_current(session.host, session.stream):
            return None  # superseded by a newer stream; its end is near
        host = session.host
        self.reports += 1
        self._liveness.beat(host, self._clock())
        self._mirror.report(host, beat.memory_free, self._wall())
        if beat.connected_for_ms and self.vouch_listener is not None:
            self.vouch_listener(host, beat.connected_for_ms / 1000)
        if beat.ha_ack and self.ha is not None:  # what it applied of an HA config
            self.ha.on_ack(host, beat)
        if self._hypervisor_down(host, beat.hypervisor_unavailable):
            return None
        if beat.domains_included:
            self._take_domains(host, beat.domains_digest, beat.domains)
            return pb.HeartbeatResponse(interval_ms=self._interval_ms,
                                        report_interval_ms=self._report_ms,
                                        domains_ack=beat.domains_digest, epoch=session.epoch)
        if beat.domains_digest != self._digests.get(host):
            return pb.HeartbeatResponse(interval_ms=self._interval_ms,
                                        report_interval_ms=self._report_ms, send_domains=True,
                                        epoch=session.epoch)
        return None

    def close(self) -> None:
        """The master is stopping: streams it ends say nothing of their hosts."""
        self._closing = True

    def reopen(self) -> None:
        """This master leads (again): stream ends count once more."""
        self._closing = False

    def end(self, session: Session, goodbye: bool) -> None:
        """The stream ended: the host is down at once, unless it has a newer one."""
        if self._closing:
            return
        cause = liveness_module.GOODBYE if goodbye else liveness_module.STREAM_ENDED
        if self._liveness.detach(session.host, session.stream, cause):
            how = "said goodbye" if goodbye else "lost its heartbeat stream"
            log.info("host %s %s: not live", session.host, how)

    def _hypervisor_down(self, host: str, down: bool) -> bool:
        """A slave that cannot reach its hypervisor (libvirt) knows nothing
        new about its domains: its list must not halt the VMs it runs. Once
        it is back, its digest differs and the master asks for the list."""
        if down and host not in self._hypervisor_unavailable:
            self._hypervisor_unavailable.add(host)
            self._digests.pop(host, None)
            log.warning("host %s cannot reach its hypervisor: its domain reports are "
                        "ignored until it can", host)
        elif not down and host in self._hypervisor_unavailable:
            self._hypervisor_unavailable.discard(host)
            log.info("host %s reaches its hypervisor again", host)
        return down

    def _take_domains(self, host: str, digest: str,
                      domains: Sequence[slave_service_pb2.Domain]) -> None:
        self._digests[host] = digest
        for listener in self._domain_listeners:
            listener(host, domains)

    async def _register(self, host: str, hello: pb.Hello, fence_after_ms: int = 0) -> None:
        """Create Host + HostMetrics for a new host; update a changed address
        or lease length, and HA's record of what the host holds (HA: durable
        before the answer tells the slave; one write, only if something changed)."""
        name = hello.name_label if hello.name_label.strip() else host[:8]
        validation.name("hello.name_label", name)
        record = self._store.get("host", host)
        if record is None:
            metrics = datamodel_pb2.HostMetrics(
                uuid=str(uuid_module.uuid4()), host=host, live=False,
                memory_total=hello.memory_total, memory_free=hello.memory_free)
            created = datamodel_pb2.Host(uuid=host, name_label=name, address=hello.address,
                                         enabled=hello.enabled, metrics=metrics.uuid,
                                         fence_after_ms=fence_after_ms)
            if self.ha is not None:
                self.ha.on_hello(host, hello, created)
            await self._store.commit([Put(metrics), Put(created)])
            return
        # The master's `enabled` is authoritative once the host is known: a
        # restarted slave must not re-enable a host an operator disabled.
        updated = copy(record)
        updated.address, updated.name_label = hello.address, name
        updated.fence_after_ms = fence_after_ms or record.fence_after_ms
        if self.ha is not None:
            self.ha.on_hello(host, hello, updated)
        if updated != record:
            await self._store.put(updated)

    def on_flip(self, host: str, live: bool) -> None:
        """A host that was not live may come back on the stream it had (a host
        SIGSTOPped, or declared dead, then resumed): the master must not trust
        the domain list it held, since DeclareDead halted its VMs and they may
        have started elsewhere meanwhile. Forgetting the digest makes the next
        beat ask for the full list, and reconciliation destroys stale domains."""
        if not live:
            self._digests.pop(host, None)
            for listener in self._not_live_listeners:
                listener(host)

    def request_domains(self, host: str) -> None:
        """Make the host send its full domain list with its next beat."""
        self._digests.pop(host, None)
