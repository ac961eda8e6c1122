"""What every xcp gRPC server has: a port of its own, reflection and health."""

from __future__ import annotations

from typing import Iterable

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from google.protobuf.message import DecodeError

from xcp_control.errors import UNDECODABLE
from xcp_control.settings import SettingsError, parse_endpoint

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class PortInUse(SettingsError):
    """The listen address is taken (or not ours to bind)."""


def bind(server: grpc.aio.Server, listen: str,
         credentials: grpc.ServerCredentials | None = None) -> str:
    """Bind `listen` (port 0 picks a free port), with TLS when credentials are
    given; the bound HOST:PORT.

    Servers are built with SO_REUSEPORT off (transport.server_options), so a
    port in use fails here, loudly, instead of being shared."""
    host, _ = parse_endpoint(listen, "--listen")
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {listen}: {exc}") from exc
    if port == 0:
        raise PortInUse(f"cannot listen on {listen}: address in use or not available")
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}"


async def add_standard_services(server: grpc.aio.Server,
                                service_names: Iterable[str]) -> health_async.HealthServicer:
    """Serve reflection (grpcurl needs no proto files) and grpc.health.v1.Health,
    SERVING for the server as a whole and for each named service."""
    names = list(service_names)
    health = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health


def service_name(pb2_module, service: str) -> str:
    """The full name of a service declared in a generated *_pb2 module."""
    return pb2_module.DESCRIPTOR.services_by_name[service].full_name


def _lenient(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except DecodeError:
            return UNDECODABLE
    return parse


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Lets our servicers answer undecodable requests with INVALID_VALUE (see
    errors.Undecodable); reflection and health keep grpcio's own handling."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        # Streamed requests (heartbeats) keep grpcio's handling: checking each
        # message would cost every beat, and only pool members send them.
        if (handler is None or handler.request_streaming
                or not details.method.startswith("/xcp.v1.")):
            return handler
        return handler._replace(request_deserializer=_lenient(handler.request_deserializer))


def _lenient_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.request_streaming:  # heartbeats: see DecodeGuard
        return handler
    return handler._replace(request_deserializer=_lenient(handler.request_deserializer))


class LenientRegistration:
    """Stands in for the server while a generated `add_*Servicer_to_server`
    registers its handlers, and registers them with lenient deserializers (see
    errors.Undecodable): what DecodeGuard does, but once at start-up instead of
    in an interceptor on every call (interceptors cost each call a coroutine
    and a handler lookup, BENCHMARKS.md "Forwarding overhead")."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Ignored: the same handlers arrive by name just after (generated code
        calls both), and are registered lenient there."""

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        lenient = {name: _lenient_handler(h) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, lenient),))
        self._server.add_registered_method_handlers(service, lenient)
