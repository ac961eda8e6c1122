"""The per-call interceptor on a real grpc.aio server on loopback: calls
counted by method and status code, unary calls timed, other services ignored."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from xcp_control.rpc.call_metrics import CallMetrics
from xcp_control.rpc.server import DecodeGuard, add_standard_services
from xcp_control.slave.hypervisor import SimulatedHypervisor
from xcp_control.slave.service import SLAVE_SERVICE, SlaveServicer
from xcp.v1 import slave_service_pb2 as pb, slave_service_pb2_grpc as pb_grpc

VM = "1b5e7c8e-1111-4222-8333-444455556666"


async def exercise(registry: CollectorRegistry) -> None:
    metrics = CallMetrics("xcp_slave", "calls", registry, prefix="/xcp.v1.SlaveService/")
    server = grpc.aio.server(interceptors=[metrics, DecodeGuard()])
    pb_grpc.add_SlaveServiceServicer_to_server(
        SlaveServicer(SimulatedHypervisor("host", 1 << 30)), server)
    await add_standard_services(server, [SLAVE_SERVICE])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SlaveServiceStub(channel)
            await stub.StartDomain(pb.StartDomainRequest(vm_uuid=VM, memory=1 << 20, vcpus=1))
            for _ in range(2):
                try:
                    await stub.StartDomain(pb.StartDomainRequest(vm_uuid=VM, memory=0, vcpus=1))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            await stub.ListDomains(pb.ListDomainsRequest())
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)


def test_calls_are_counted_by_method_and_code_and_timed():
    registry = CollectorRegistry()
    asyncio.run(asyncio.wait_for(exercise(registry), 30))
    value = registry.get_sample_value
    start = {"service": "SlaveService", "method": "StartDomain"}
    assert value("xcp_slave_calls_total", {**start, "code": "OK"}) == 1
    assert value("xcp_slave_calls_total", {**start, "code": "INVALID_ARGUMENT"}) == 2
    assert value("xcp_slave_call_seconds_count", start) == 3
    assert value("xcp_slave_calls_total", {"service": "SlaveService", "method": "ListDomains",
                                           "code": "OK"}) == 1
    # Health and reflection are not ours: not counted.
    assert value("xcp_slave_calls_total", {"service": "Health", "method": "Check",
                                           "code": "OK"}) is None
