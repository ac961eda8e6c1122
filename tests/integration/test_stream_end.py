"""An open heartbeat stream means "the master counts this host live" (README,
"Timing"): the master ends the stream of a host it stops counting live
(DeclareDead), and `close_all` (a leader stepping down) ends every stream, each
with HOST_OFFLINE so the slave knows at once. In-process grpc.aio server over a
real store and real loopback sockets."""

from __future__ import annotations

import asyncio

import grpc

from tests.master.world import NOW, World, new_uuid, run
from xcp_control.errors import XcpError
from xcp_control.master.api import LivenessServicer
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.rpc.options import server_options
from xcp_control.rpc.server import bind
from xcp.v1 import liveness_service_pb2 as pb, liveness_service_pb2_grpc as pb_grpc


async def serve(world: World) -> tuple[grpc.aio.Server, LivenessServicer, str]:
    mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW, write_interval=30.0)
    sessions = HeartbeatSessions(world.store, world.liveness, mirror, 2.0, clock=lambda: NOW,
                                 report_interval=10.0)
    servicer = LivenessServicer(sessions, hello_timeout=5.0)
    world.liveness.add_listener(sessions.on_flip)  # as Master._wire registers them
    sessions.add_not_live_listener(servicer.close)
    server = grpc.aio.server(options=server_options(4 << 20))
    pb_grpc.add_LivenessServiceServicer_to_server(servicer, server)
    address = bind(server, "127.0.0.1:0")
    await server.start()
    return server, servicer, address


async def open_stream(address: str, host: str):
    channel = grpc.aio.insecure_channel(address)
    call = pb_grpc.LivenessServiceStub(channel).Heartbeat()
    await call.write(pb.HeartbeatRequest(hello=pb.Hello(
        host_uuid=host, name_label="h", address="127.0.0.1:9", memory_total=8, memory_free=8)))
    reply = await asyncio.wait_for(call.read(), 5)
    assert reply.report_interval_ms == 10_000
    return channel, call


async def ended_offline(call) -> str:
    try:
        while (await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        err = XcpError.from_rpc_error(exc)
        return err.reason if err else exc.code().name
    return "EOF"


def test_declare_dead_ends_the_hosts_stream_with_host_offline(tmp_path):
    async def body(world: World):
        server, _, address = await serve(world)
        host = new_uuid()
        channel, call = await open_stream(address, host)
        try:
            assert world.liveness.is_live(host)
            world.liveness.mark_down(host)  # what DeclareDead does
            assert await ended_offline(call) == "HOST_OFFLINE"
        finally:
            await channel.close()
            await server.stop(None)
    run(body, tmp_path)


def test_close_all_ends_every_stream(tmp_path):
    async def body(world: World):
        server, servicer, address = await serve(world)
        streams = [await open_stream(address, new_uuid()) for _ in range(3)]
        try:
            servicer.close_all()
            assert [await ended_offline(call) for _, call in streams] == ["HOST_OFFLINE"] * 3
        finally:
            for channel, _ in streams:
                await channel.close()
            await server.stop(None)
    run(body, tmp_path)
