"""What a slave tells the master, and when: no I/O, no clock of its own.

A report (a Beat) goes out when the host's memory or domains changed, and at
least once per report_interval; liveness itself is the transport's (the
master's gRPC core PINGs the connection, liveness_service.proto), so a steady
host costs the master one small message per report_interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from xcp.v1 import liveness_service_pb2 as pb
from xcp_control.model import domains_digest
from xcp_control.slave.hypervisor import DomainInfo

# Free memory moving by at least this share of the total is a change worth a
# report at once; smaller drifts wait for the next periodic report.
MEMORY_REPORT_FRACTION = 0.01


def next_tick(previous: float, interval: float, now: float) -> float:
    """When the tick after the one scheduled at `previous` is due: on the
    original grid (no drift accumulates from late wake-ups), skipping ticks
    already missed rather than sending a burst."""
    due = previous + interval
    if due <= now:
        due += ((now - due) // interval + 1) * interval
    return due


class ReportPolicy:
    """When the next report is due, on readings of a monotonic clock.

    Due `report_interval` after the last one; at once when the domain list
    changed or free memory moved by MEMORY_REPORT_FRACTION of the total since
    the last report. `check_every` is how often the caller should look at
    memory between reports (domain changes wake it by themselves)."""

    def __init__(self, report_interval: float, check_every: float, memory_total: int) -> None:
        self.report_interval = report_interval
        self.check_every = min(check_every, report_interval)
        self._threshold = max(1, int(memory_total * MEMORY_REPORT_FRACTION))
        self._sent_at = float("-inf")
        self._sent_memory: int | None = None

    def sent(self, now: float, memory_free: int) -> None:
        self._sent_at = now
        self._sent_memory = memory_free

    def due(self, now: float, memory_free: int, domains_changed: bool) -> bool:
        if domains_changed or now >= self._sent_at + self.report_interval:
            return True
        return (self._sent_memory is None
                or abs(memory_free - self._sent_memory) >= self._threshold)

    def next_check(self, now: float) -> float:
        """When to look again if nothing wakes us: the next memory check or the
        periodic report, whichever comes first."""
        return min(now + self.check_every, self._sent_at + self.report_interval)


@dataclass(frozen=True)
class HostIdentity:
    """Who this slave is, as the Hello tells the master."""

    uuid: str
    name_label: str
    address: str  # where SlaveService listens, host:port


@dataclass(frozen=True)
class DomainSnapshot:
    """The domain list at one moment, with its digest."""

    domains: tuple[DomainInfo, ...]
    digest: str

    @classmethod
    def of(cls, domains: list[DomainInfo] | tuple[DomainInfo, ...]) -> "DomainSnapshot":
        return cls(tuple(domains), domains_digest(domains))


class BeatComposer:
    """Decides what goes in each message of one stream.

    It tracks the digest of the domain list the master holds: the Hello's, then
    every full list sent (the stream is ordered and reliable, so the master has
    it unless the stream breaks, and then a new Hello resends it), overridden by
    each `domains_ack`. A Beat carries the full list exactly when the current
    digest differs from that, or when the master asked with send_domains. An
    empty domains_ack is no statement (the empty list has its own digest)."""

    def __init__(self) -> None:
        self._seq = 0
        self._master_digest: str | None = None
        self._resend = False

    def hello(self, identity: HostIdentity, memory_total: int, memory_free: int,
              enabled: bool, snapshot: DomainSnapshot) -> pb.HeartbeatRequest:
        self._master_digest = snapshot.digest
        hello = pb.Hello(host_uuid=identity.uuid, name_label=identity.name_label,
                         address=identity.address, memory_total=memory_total,
                         memory_free=memory_free, enabled=enabled,
                         domains=[d.to_proto() for d in snapshot.domains],
                         domains_digest=snapshot.digest)
        return pb.HeartbeatRequest(hello=hello)

    def beat(self, memory_free: int, snapshot: DomainSnapshot) -> pb.HeartbeatRequest:
        self._seq += 1
        beat = pb.Beat(seq=self._seq, memory_free=memory_free, domains_digest=snapshot.digest)
        if self._resend or snapshot.digest != self._master_digest:
            beat.domains_included = True
            beat.domains.extend(d.to_proto() for d in snapshot.domains)
            self._master_digest = snapshot.digest
            self._resend = False
        return pb.HeartbeatRequest(beat=beat)

    @property
    def must_resend(self) -> bool:
        """The master asked for the full list: the next report should go now."""
        return self._resend

    def on_response(self, response: pb.HeartbeatResponse) -> None:
        if response.domains_ack:
            self._master_digest = response.domains_ack
        if response.send_domains:
            self._resend = True
