"""When a slave reports (issue 10): on a change, and at least once per report
interval; and what it takes for being turned away. Fake clock, no network."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xcp.v1 import liveness_service_pb2 as pb
from xcp_control.slave.backoff import turned_away
from xcp_control.slave.heartbeat import HeartbeatClient, HostIdentity
from xcp_control.slave.hypervisor import SimulatedHypervisor
from xcp_control.slave.reports import BeatComposer, ReportPolicy

GIB = 1 << 30
TOTAL = 64 * GIB
HOST = HostIdentity("33333333-3333-4333-8333-333333333333", "h3", "127.0.0.1:5000")


def policy(sent_at: float = 100.0, memory: int = TOTAL) -> ReportPolicy:
    p = ReportPolicy(report_interval=10.0, check_every=2.0, memory_total=TOTAL)
    p.sent(sent_at, memory)
    return p


def test_a_steady_host_reports_once_per_report_interval():
    p = policy()
    assert not p.due(109.99, TOTAL, domains_changed=False)
    assert p.due(110.0, TOTAL, domains_changed=False)


def test_a_domain_change_is_reported_at_once():
    assert policy().due(100.01, TOTAL, domains_changed=True)


def test_memory_that_moves_by_a_percent_is_reported_at_once_smaller_drift_waits():
    p = policy()
    assert not p.due(101.0, TOTAL - TOTAL // 200, domains_changed=False)  # 0.5 %
    assert p.due(101.0, TOTAL - TOTAL // 100, domains_changed=False)  # 1 %
    p.sent(101.0, TOTAL - TOTAL // 100)
    assert not p.due(102.0, TOTAL - TOTAL // 100, domains_changed=False)


def test_memory_is_looked_at_every_check_between_reports():
    p = policy()
    assert p.next_check(100.0) == 102.0
    assert p.next_check(109.0) == 110.0  # the periodic report comes first
    assert ReportPolicy(1.0, 2.0, TOTAL).check_every == 1.0


def test_a_master_asking_for_the_domains_makes_the_next_report_due():
    composer = BeatComposer()
    assert not composer.must_resend
    composer.on_response(pb.HeartbeatResponse(send_domains=True))
    assert composer.must_resend


def test_the_client_takes_both_intervals_from_the_master_and_falls_back_for_an_old_one():
    async def go():
        client = HeartbeatClient("127.0.0.1:1", HOST, SimulatedHypervisor(HOST.uuid, GIB))
        client._apply(BeatComposer(), pb.HeartbeatResponse(interval_ms=2000,
                                                            report_interval_ms=10000))
        assert (client.interval, client.report_interval) == (2.0, 10.0)
        client._apply(BeatComposer(), pb.HeartbeatResponse(interval_ms=1000))  # older master
        assert (client.interval, client.report_interval) == (1.0, 1.0)
    asyncio.run(go())


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_a_slave_refused_for_who_it_is_counts_as_turned_away(code):
    """A wrong or borrowed certificate: retrying three times a second cannot help."""
    assert turned_away(FakeRpcError(code))


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_an_unreachable_master_is_not_turned_away(code):
    assert not turned_away(FakeRpcError(code))
