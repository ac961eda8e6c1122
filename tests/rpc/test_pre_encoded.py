"""PreEncodedResponses: a handler registered through it may answer with bytes
already encoded (sent as they are) or with messages (serialized as usual)."""

from __future__ import annotations

import asyncio

import grpc

from xcp_control.rpc.server import PreEncodedResponses
from xcp.v1 import liveness_service_pb2 as pb, liveness_service_pb2_grpc as pb_grpc


class Answers(pb_grpc.LivenessServiceServicer):
    async def Heartbeat(self, request_iterator, context):
        await anext(request_iterator)
        yield pb.HeartbeatResponse(interval_ms=1000)
        head = pb.HeartbeatResponse(ha_config=True).SerializeToString()
        yield head + pb.HeartbeatResponse(peers=[pb.HaPeer(host_uuid="a")]).SerializeToString()


def test_bytes_are_sent_as_they_are_and_messages_serialized():
    async def main():
        server = grpc.aio.server()
        pb_grpc.add_LivenessServiceServicer_to_server(Answers(), PreEncodedResponses(server))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.LivenessServiceStub(channel).Heartbeat()
                await call.write(pb.HeartbeatRequest(hello=pb.Hello(host_uuid="h")))
                first, second = await call.read(), await call.read()
                call.cancel()
            return first, second
        finally:
            await server.stop(None)
    first, second = asyncio.run(asyncio.wait_for(main(), 30))
    assert first.interval_ms == 1000
    assert second.ha_config and [p.host_uuid for p in second.peers] == ["a"]
