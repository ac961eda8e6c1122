"""SlaveService.FollowLeader: a new leader calls a host over and its heartbeat
stream moves at once, over real loopback sockets (a real xcp-slave process;
in-process grpc.aio servers stand in for the masters). An older epoch than
the newest seen is refused (STALE_MASTER) and moves nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.support.fakes import serve_liveness
from tests.support.daemons import SlaveProcess
from xcp.v1 import liveness_service_pb2 as pb, liveness_service_pb2_grpc as pb_grpc
from xcp.v1 import slave_service_pb2 as sl, slave_service_pb2_grpc
from xcp_control.errors import error_info
from xcp_control.slave.heartbeat import HeartbeatClient, HostIdentity, Reconnect
from xcp_control.slave.hypervisor import SimulatedHypervisor

HOST = HostIdentity("33333333-3333-4333-8333-333333333333", "h3", "127.0.0.1:5000")


class Welcoming(pb_grpc.LivenessServiceServicer):
    """Answers each Hello, then stays silent with the stream open (as a
    SIGSTOPped master's socket does, as far as the slave can tell)."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch
        self.hellos: list[str] = []
        self.arrived = asyncio.Event()

    async def Heartbeat(self, request_iterator, context):
        first = await anext(request_iterator)
        self.hellos.append(first.hello.host_uuid)
        self.arrived.set()
        yield pb.HeartbeatResponse(interval_ms=1000, report_interval_ms=10_000,
                                   epoch=self.epoch)
        async for _ in request_iterator:
            pass


def test_reconnect_to_leaves_the_open_stream_and_goes_to_the_leader_at_once():
    async def go():
        a, b = Welcoming(), Welcoming()
        servers = [await serve_liveness(a), await serve_liveness(b)]
        client = HeartbeatClient(servers[0][1], HOST, SimulatedHypervisor(HOST.uuid, 1 << 30),
                                 interval=1.0, reconnect=Reconnect(cap=30.0))
        runner = asyncio.ensure_future(client.run())
        try:
            await asyncio.wait_for(a.arrived.wait(), 10)
            await asyncio.wait_for(_until(lambda: client.connected), 10)
            assert client.reconnect_to(servers[0][1]) is False  # there already
            assert client.reconnect_to(servers[1][1]) is True
            # Within far less than the channel's keepalive (3 s) would take.
            await asyncio.wait_for(b.arrived.wait(), 2.0)
            await asyncio.wait_for(_until(lambda: client.connected), 2.0)
            assert client.master == servers[1][1]
            assert client.reconnect_to(servers[1][1]) is False
        finally:
            await client.stop(timeout=5)
            await asyncio.wait_for(runner, 5)
            for server, _ in servers:
                await server.stop(None)
    asyncio.run(go())


def test_reconnect_to_cuts_a_long_backoff_short():
    async def go():
        dead_server, dead = await serve_liveness(Welcoming())
        await dead_server.stop(None)  # refused from now on
        b = Welcoming()
        server, address = await serve_liveness(b)
        # One master only: every failure is followed by the (long) backoff.
        client = HeartbeatClient(dead, HOST, SimulatedHypervisor(HOST.uuid, 1 << 30),
                                 interval=1.0, reconnect=Reconnect(cap=30.0, busy_cap=30.0))
        runner = asyncio.ensure_future(client.run())
        try:
            await asyncio.sleep(0.3)  # a real socket refusal, then the backoff
            assert client.reconnect_to(address) is True
            await asyncio.wait_for(b.arrived.wait(), 2.0)
        finally:
            await client.stop(timeout=5)
            await asyncio.wait_for(runner, 5)
            await server.stop(None)
    asyncio.run(go())


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def _reason(exc: grpc.RpcError) -> str:
    info = error_info(exc)
    return info.reason if info else exc.code().name


def test_a_slave_follows_a_newer_leader_and_refuses_an_older_one(tmp_path):
    async def go():
        old, new = Welcoming(epoch=5), Welcoming(epoch=9)
        (old_server, old_addr) = await serve_liveness(old)
        (new_server, new_addr) = await serve_liveness(new)
        slave = SlaveProcess(f"{old_addr}", tmp_path / "slave", name="s1", log_dir=tmp_path)
        await asyncio.to_thread(slave.start)
        try:
            await asyncio.wait_for(old.arrived.wait(), 10)
            async with grpc.aio.insecure_channel(slave.address) as ch:
                stub = slave_service_pb2_grpc.SlaveServiceStub(ch)
                # Epoch 5 was seen (the Hello answer); 3 is older: refused.
                with pytest.raises(grpc.RpcError) as refused:
                    await stub.FollowLeader(sl.FollowLeaderRequest(epoch=3, leader=new_addr),
                                            timeout=5, metadata=(("xcp-epoch", "3"),))
                assert _reason(refused.value) == "STALE_MASTER"
                with pytest.raises(grpc.RpcError) as bad:
                    await stub.FollowLeader(sl.FollowLeaderRequest(epoch=9), timeout=5,
                                            metadata=(("xcp-epoch", "9"),))
                assert _reason(bad.value) == "INVALID_VALUE"
                assert not new.hellos
                reply = await stub.FollowLeader(sl.FollowLeaderRequest(epoch=9, leader=new_addr),
                                                timeout=5, metadata=(("xcp-epoch", "9"),))
                assert reply.moved
                await asyncio.wait_for(new.arrived.wait(), 2.0)
                # The old leader, resumed, cannot call it back.
                with pytest.raises(grpc.RpcError) as stale:
                    await stub.FollowLeader(sl.FollowLeaderRequest(epoch=5, leader=old_addr),
                                            timeout=5, metadata=(("xcp-epoch", "5"),))
                assert _reason(stale.value) == "STALE_MASTER"
                again = await stub.FollowLeader(sl.FollowLeaderRequest(epoch=9, leader=new_addr),
                                                timeout=5, metadata=(("xcp-epoch", "9"),))
                assert not again.moved
            assert old.hellos == [slave.uuid] and new.hellos == [slave.uuid]
        finally:
            await asyncio.to_thread(slave.stop)
            await old_server.stop(None)
            await new_server.stop(None)
    asyncio.run(go())
