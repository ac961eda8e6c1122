"""The translation table and the HOST_OFFLINE paths, with no network."""

import asyncio

import grpc
import pytest

from tests.support.fakes import FakeRpcError

from xcp_control.master import forwarding
from xcp_control.errors import XcpError
from xcp_control.master.forwarding import ConnectFailed, Forwarder, translate
from xcp_control.master.liveness import Liveness
from xcp.v1 import datamodel_pb2 as dm, slave_service_pb2 as sl

HOST = "0b5e7c8e-1111-4222-8333-444455556666"


class FakeStore:
    def __init__(self):
        self.hosts = {HOST: dm.Host(uuid=HOST, address="127.0.0.1:1")}

    def get(self, class_name, uuid):
        return self.hosts.get(uuid)


@pytest.mark.parametrize("code, reason", [
    (grpc.StatusCode.UNAVAILABLE, "CANNOT_CONTACT_HOST"),
    (grpc.StatusCode.CANCELLED, "CANNOT_CONTACT_HOST"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "OPERATION_TIMED_OUT"),
    (grpc.StatusCode.UNKNOWN, "INTERNAL_ERROR"),
    (grpc.StatusCode.UNIMPLEMENTED, "INTERNAL_ERROR"),
])
def test_transport_failures_map_by_the_table(code, reason):
    assert translate(FakeRpcError(code), HOST, "start").reason == reason


def test_connect_failure_is_cannot_contact():
    assert translate(ConnectFailed("refused"), HOST, "start").reason == "CANNOT_CONTACT_HOST"


def test_catalogued_slave_error_passes_through_unchanged():
    original = XcpError("VM_BAD_POWER_STATE", vm="v", expected="RUNNING", actual="PAUSED")
    exc = FakeRpcError.of(original)
    passed = translate(exc, HOST, "pause")
    assert (passed.reason, passed.params) == (original.reason, original.params)


def make_forwarder():
    liveness = Liveness(report_deadline=3.0, grace=0.0, started_at=0.0)
    forwarder = Forwarder(FakeStore(), liveness, contact_timeout=2.0, clock=lambda: 0.0)
    liveness.add_listener(forwarder.on_flip)
    return forwarder, liveness


def test_host_not_live_is_offline_without_a_channel():
    async def scenario():
        forwarder, _ = make_forwarder()
        with pytest.raises(XcpError) as err:
            await forwarder.call(HOST, "PauseDomain", sl.PauseDomainRequest(), operation="pause",
                                 timeout=1.0, budget=None)
        assert err.value.reason == "HOST_OFFLINE"
        assert forwarder._peers == {}  # no channel was even created
    asyncio.run(scenario())


def test_calls_in_flight_fail_offline_the_moment_the_host_is_declared_dead(monkeypatch):
    started = None

    async def hang(self, peer, method, request, deadline):
        started.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(Forwarder, "_invoke", hang)

    async def scenario():
        nonlocal started
        started = asyncio.Event()
        forwarder, liveness = make_forwarder()
        liveness.beat(HOST, 1.0)
        call = asyncio.ensure_future(forwarder.call(
            HOST, "ShutdownDomain", sl.ShutdownDomainRequest(), operation="clean_shutdown",
            timeout=60.0, budget=None))
        await started.wait()
        assert forwarder.in_flight(HOST) == 1
        liveness.mark_down(HOST)
        with pytest.raises(XcpError) as err:
            await call
        assert err.value.reason == "HOST_OFFLINE"
        assert forwarder.in_flight(HOST) == 0
        await forwarder.close()
    asyncio.run(scenario())


def test_an_exhausted_client_budget_times_out_before_any_traffic():
    async def scenario():
        forwarder, liveness = make_forwarder()
        liveness.beat(HOST, 1.0)
        with pytest.raises(XcpError) as err:
            await forwarder.call(HOST, "PauseDomain", sl.PauseDomainRequest(), operation="pause",
                                 timeout=10.0, budget=forwarding.DEADLINE_MARGIN / 2)
        assert err.value.reason == "OPERATION_TIMED_OUT"
        assert forwarder._peers == {}
    asyncio.run(scenario())


def test_a_host_declared_down_gets_a_fresh_channel_when_it_returns(monkeypatch):
    """After a partition the old connection can still look READY while its packets
    wait out TCP's retransmission backoff: a returning host must not inherit it."""
    async def answer(self, peer, method, request, deadline):
        return sl.Domain()

    monkeypatch.setattr(Forwarder, "_invoke", answer)

    async def pause(forwarder):
        await forwarder.call(HOST, "PauseDomain", sl.PauseDomainRequest(), operation="pause",
                             timeout=1.0, budget=None)

    async def scenario():
        forwarder, liveness = make_forwarder()
        liveness.beat(HOST, 1.0)
        await pause(forwarder)
        before = forwarder._peers[HOST].channel
        liveness.mark_down(HOST)
        assert HOST not in forwarder._peers
        liveness.beat(HOST, 2.0)
        await pause(forwarder)
        assert forwarder._peers[HOST].channel is not before
        await forwarder.close()
    asyncio.run(scenario())
