"""Per-call gRPC metrics: a server interceptor counting calls by method and
status code, and timing unary calls.

The master uses it for its API (`xcp_api_calls_total`, `xcp_api_call_seconds`),
the slave for the domain operations the master forwards to it. Only methods
under `prefix` are counted (reflection and health are not ours to count), so
label values come from our own service definitions, never from a caller.
Streams are counted when they end; their lifetime is no latency, so only
unary calls go into the histogram.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

# From a cached read (~100 us) to a forwarded VM start (tens of seconds).
BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)


def status_name(context: grpc.aio.ServicerContext, otherwise: str = "OK") -> str:
    """The status code a finished call carries: what it aborted with, else
    `otherwise` (OK after a normal return, UNKNOWN after a stray exception)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio versions keep the raw number
        for known in grpc.StatusCode:
            if known.value[0] == code:
                return known.name
    return "OK"


class CallMetrics(grpc.aio.ServerInterceptor):
    """Counts `{name}_calls_total{service,method,code}` and times unary calls
    in `{name}_call_seconds{service,method}`."""

    def __init__(self, name: str, what: str, registry: CollectorRegistry,
                 prefix: str = "/xcp.v1.", clock: Callable[[], float] = time.monotonic) -> None:
        self.calls = Counter(f"{name}_calls", f"{what} by method and gRPC status code",
                             ["service", "method", "code"], registry=registry)
        self.seconds = Histogram(f"{name}_call_seconds", f"Duration of unary {what}",
                                 ["service", "method"], buckets=BUCKETS, registry=registry)
        self._prefix = prefix
        self._clock = clock

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefix):
            return handler
        service, _, method = details.method[1:].rpartition("/")
        service = service.rpartition(".")[2]
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, service, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, service,
                                                              method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, service,
                                                             method, timed=False))
        return handler._replace(stream_stream=self._stream(handler.stream_stream, service,
                                                           method))

    def _unary(self, behavior, service: str, method: str, timed: bool = True):
        async def observed(request, context):
            started = self._clock()
            code = "UNKNOWN"
            try:
                answer = await behavior(request, context)
                code = status_name(context)
                return answer
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = status_name(context, "UNKNOWN")
                raise
            finally:
                self.calls.labels(service, method, code).inc()
                if timed:
                    self.seconds.labels(service, method).observe(self._clock() - started)
        return observed

    def _stream(self, behavior, service: str, method: str):
        if not inspect.isasyncgenfunction(behavior):  # a stream written with context.write
            return self._unary(behavior, service, method, timed=False)

        async def observed(request, context):
            code = "UNKNOWN"
            try:
                async for item in behavior(request, context):
                    yield item
                code = status_name(context)
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except BaseException:
                code = status_name(context, "UNKNOWN")
                raise
            finally:
                self.calls.labels(service, method, code).inc()
        return observed
