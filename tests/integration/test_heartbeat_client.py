"""The slave's heartbeat client against masters that turn it away, over real
loopback sockets (in-process grpc.aio servers standing in for the master).

A master that is up but does not take the stream (TOO_BUSY, or the Hello left
unanswered) must make the client back off further, not hammer it (the
reconnect storm of BENCHMARKS.md); a master that cannot be reached is retried
on the short backoff, so a restart is absorbed in a second."""

from __future__ import annotations

import asyncio
import signal

import grpc

from tests.support.fakes import serve_liveness
from xcp.v1 import liveness_service_pb2 as pb, liveness_service_pb2_grpc as pb_grpc
from xcp_control.errors import XcpError
from xcp_control.slave.heartbeat import HeartbeatClient, HostIdentity, Reconnect
from xcp_control.slave.hypervisor import SimulatedHypervisor
from tests.support.daemons import MasterProcess

HOST = HostIdentity("22222222-2222-4222-8222-222222222222", "h2", "127.0.0.1:5000")


class Recording(Reconnect):
    """The real policy, with short delays, remembering what each failure was."""

    def __init__(self) -> None:
        super().__init__(cap=0.05, busy_cap=0.05)
        self.failures: list[bool] = []
        self.welcomes = 0

    def after_failure(self, busy: bool) -> float:
        self.failures.append(busy)
        return super().after_failure(busy)

    def welcomed(self) -> None:
        self.welcomes += 1
        super().welcomed()


class TooBusy(pb_grpc.LivenessServiceServicer):
    async def Heartbeat(self, request_iterator, context):
        await context.abort_with_status(XcpError("TOO_BUSY", detail="test").to_status())
        yield  # pragma: no cover - an async generator, as the real servicer is


class Refusing(pb_grpc.LivenessServiceServicer):
    """Refuses the caller for who it is, as the master does a borrowed certificate."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def Heartbeat(self, request_iterator, context):
        await context.abort(self.code, "not this host")
        yield  # pragma: no cover


class Mute(pb_grpc.LivenessServiceServicer):
    """Takes the stream and reads the Hello, but never answers it."""

    async def Heartbeat(self, request_iterator, context):
        async for _ in request_iterator:
            pass
        yield  # pragma: no cover


async def failures_against(master: str, seconds: float, interval: float = 0.1) -> Recording:
    policy = Recording()
    client = HeartbeatClient(master, HOST, SimulatedHypervisor(HOST.uuid, 1 << 30),
                             interval=interval, reconnect=policy)
    runner = asyncio.ensure_future(client.run())
    await asyncio.sleep(seconds)
    await client.stop(timeout=5)
    await asyncio.wait_for(runner, 5)
    return policy


def assert_nearly_all_turned_away(policy: Recording, *about) -> None:
    """Every refusal counts as turned away. grpc itself now and then ends such a
    call with INTERNAL instead ("GOAWAY ... Cancelling all calls": 1 in 300
    attempts on this machine, more under load), which rightly is not a refusal;
    so: nearly all of many attempts, and never none."""
    busy = sum(policy.failures)
    assert len(policy.failures) >= 3 and busy >= 0.8 * len(policy.failures), \
        (*about, policy.failures)


def test_a_master_that_sheds_the_stream_is_busy():
    async def go():
        server, address = await serve_liveness(TooBusy())
        try:
            policy = await failures_against(address, 1.0)
        finally:
            await server.stop(None)
        assert_nearly_all_turned_away(policy)
        assert policy.welcomes == 0
    asyncio.run(go())


def test_a_slave_refused_for_who_it_is_backs_off_as_turned_away():
    """PERMISSION_DENIED / UNAUTHENTICATED: retrying at once cannot help, so the
    slave backs off as from a busy master instead of knocking 3 times a second."""
    async def go():
        for code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            server, address = await serve_liveness(Refusing(code))
            try:
                policy = await failures_against(address, 1.0)
            finally:
                await server.stop(None)
            assert_nearly_all_turned_away(policy, code)
    asyncio.run(go())


def test_an_unanswered_hello_is_busy_after_the_hello_timeout():
    async def go():
        server, address = await serve_liveness(Mute())
        try:
            policy = await failures_against(address, 3.0)  # hello timeout: 2 s at 0.1 s
        finally:
            await server.stop(None)
        assert policy.failures and all(policy.failures), policy.failures
        assert len(policy.failures) == 1  # one Hello, one 2 s wait, then stopped mid-second
    asyncio.run(go())


def test_an_unreachable_master_is_not_busy():
    async def go():
        server, address = await serve_liveness(Mute())
        await server.stop(None)  # the port is closed now: refused
        policy = await failures_against(address, 1.0)
        assert len(policy.failures) >= 3 and not any(policy.failures), policy.failures
    asyncio.run(go())


def test_a_frozen_master_is_unreachable_not_busy(tmp_path):
    """A SIGSTOPped master accepts TCP (the kernel does) but never speaks HTTP/2:
    the Hello cannot even be written, so it is "unreachable" and the slave keeps
    retrying within a second, ready for the SIGCONT; growing the busy backoff
    here would keep a whole pool away from a master that was only paused."""
    with MasterProcess(tmp_path / "pool.db") as master:
        master.kill(signal.SIGSTOP)
        try:
            policy = asyncio.run(failures_against(master.address, 5.0, interval=0.5))
        finally:
            master.kill(signal.SIGCONT)
    assert policy.failures and not any(policy.failures), policy.failures
