"""The one fake gRPC call and servicer context of the unit tests (no network).

`FakeRpcError` is what a failed sync call raises: an RpcError that is also the call
(code, details, trailing metadata), as grpc's own is, so `rpc_status.from_call` and
`XcpError.from_rpc_error` read it like the real one. `aio_rpc_error` is grpc.aio's
own error class, built without a call. `FakeContext` records what a servicer aborted
with.
"""

from __future__ import annotations

import grpc


class FakeRpcError(grpc.RpcError, grpc.Call):
    """A failed call's error, built from a code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str = "", trailing=()) -> None:
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    @classmethod
    def from_status(cls, status: grpc.Status) -> "FakeRpcError":
        """What a client sees when the server ended the call with `status`."""
        return cls(status.code, status.details, status.trailing_metadata)

    @classmethod
    def of(cls, err) -> "FakeRpcError":
        """What a client sees when the server raised the XcpError `err`."""
        return cls.from_status(err.to_status())

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class FakeStatus(grpc.Status):
    """A grpc.Status (grpc's is an abstract class with these three attributes)."""

    def __init__(self, code, details, trailing_metadata=()):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


def aio_rpc_error(code: grpc.StatusCode, details: str = "x") -> grpc.aio.AioRpcError:
    """The error a failed grpc.aio call raises, with this code."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeContext:
    """A servicer context that records what the servicer aborted with."""

    def __init__(self) -> None:
        self.aborted: tuple | None = None

    async def abort(self, code, details, trailing_metadata=()):
        self.aborted = (code, details, trailing_metadata)
        raise grpc.aio.AbortError()


async def serve_liveness(servicer) -> tuple[grpc.aio.Server, str]:
    """A LivenessService of the test's own (a scripted master) on a free
    loopback port: the server and its HOST:PORT."""
    from xcp.v1 import liveness_service_pb2_grpc
    from xcp_control.rpc.options import server_options
    from xcp_control.rpc.server import bind

    server = grpc.aio.server(options=server_options(4 << 20))
    liveness_service_pb2_grpc.add_LivenessServiceServicer_to_server(servicer, server)
    address = bind(server, "127.0.0.1:0")
    await server.start()
    return server, address
