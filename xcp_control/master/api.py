"""The master's gRPC servicers: proto in, domain call, proto out.

Servicers stay thin: the logic lives in Pool (pool.py), Lifecycle
(lifecycle.py), EventHub (events.py) and HeartbeatSessions (heartbeats.py).
Every method is wrapped by `rpc_method`, so errors leave as catalogued
statuses and nothing else.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from xcp_control import errors, validation
from xcp_control.errors import rpc_method
from xcp_control.master.events import EventHub, Sync
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.master.lifecycle import Lifecycle
from xcp_control.master.listing import HostListing
from xcp_control.master.pool import Pool
from xcp_control.master.store import Change
from xcp.v1 import (
    event_service_pb2 as ev,
    event_service_pb2_grpc,
    host_service_pb2 as hs,
    host_service_pb2_grpc,
    liveness_service_pb2_grpc,
    pool_service_pb2_grpc,
    vm_service_pb2 as vs,
    vm_service_pb2_grpc,
)

log = logging.getLogger(__name__)


def budget(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left of the client's deadline, None when it set none."""
    return context.time_remaining()


class HostServicer(host_service_pb2_grpc.HostServiceServicer):
    def __init__(self, pool: Pool, lifecycle: Lifecycle, listing: HostListing) -> None:
        self._pool = pool
        self._lifecycle = lifecycle
        self._listing = listing

    @rpc_method
    async def ListHosts(self, request, context):
        return self._listing.response()

    @rpc_method
    async def GetHost(self, request, context):
        return self._pool.host(request.uuid)

    @rpc_method
    async def GetHostMetrics(self, request, context):
        return self._pool.host_metrics(request.uuid)

    @rpc_method
    async def DisableHost(self, request, context):
        return await self._lifecycle.set_host_enabled(request.uuid, False, budget(context))

    @rpc_method
    async def EnableHost(self, request, context):
        return await self._lifecycle.set_host_enabled(request.uuid, True, budget(context))

    @rpc_method
    async def DeclareDead(self, request, context):
        return await self._pool.declare_dead(request.uuid)

    @rpc_method
    async def ForgetHost(self, request, context):
        await self._pool.forget_host(request.uuid)
        return hs.ForgetHostResponse()


class VMServicer(vm_service_pb2_grpc.VMServiceServicer):
    def __init__(self, pool: Pool, lifecycle: Lifecycle) -> None:
        self._pool = pool
        self._lifecycle = lifecycle

    @rpc_method
    async def CreateVM(self, request, context):
        return await self._pool.create_vm(request.name_label, request.memory, request.vcpus,
                                          request.affinity, dict(request.other_config),
                                          boot=validation.boot(request))

    @rpc_method
    async def GetVM(self, request, context):
        return self._pool.vm(request.uuid)

    @rpc_method
    async def ListVMs(self, request, context):
        vms, next_token = self._pool.list_vms(request.host, request.power_state,
                                              request.page_size, request.page_token)
        return vs.ListVMsResponse(vms=vms, next_page_token=next_token)

    @rpc_method
    async def DestroyVM(self, request, context):
        await self._pool.destroy_vm(request.uuid)
        return vs.DestroyVMResponse()

    @rpc_method
    async def StartVM(self, request, context):
        return await self._lifecycle.start_vm(request.uuid, request.host, request.paused,
                                              budget(context))

    @rpc_method
    async def ShutdownVM(self, request, context):
        return await self._lifecycle.shutdown_vm(request.uuid, request.force, budget(context))

    @rpc_method
    async def RebootVM(self, request, context):
        return await self._lifecycle.reboot_vm(request.uuid, request.force, budget(context))

    @rpc_method
    async def PauseVM(self, request, context):
        return await self._lifecycle.pause_vm(request.uuid, budget(context))

    @rpc_method
    async def UnpauseVM(self, request, context):
        return await self._lifecycle.unpause_vm(request.uuid, budget(context))


_OPS = {"add": ev.ADD, "mod": ev.MOD, "del": ev.DEL}


def to_event(item: Change | Sync, hub: EventHub) -> ev.Event:
    if isinstance(item, Sync):
        return ev.Event(token=hub.token(item.generation), op=ev.SYNC)
    event = ev.Event(token=hub.token(item.generation), op=_OPS[item.op],
                     class_name=item.class_name, uuid=item.uuid)
    getattr(event, item.class_name).CopyFrom(item.obj)
    return event


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    @rpc_method
    async def Watch(self, request, context):
        async for item in self._hub.watch(request.classes, request.token):
            yield to_event(item, self._hub)


class PoolServicer(pool_service_pb2_grpc.PoolServiceServicer):
    """GetPool: answered by every master itself (who leads, which masters run)."""

    def __init__(self, describe) -> None:
        self._describe = describe

    @rpc_method
    async def GetPool(self, request, context):
        return self._describe()


class LivenessServicer(liveness_service_pb2_grpc.LivenessServiceServicer):
    """Heartbeat streams. A newer stream of a host supersedes (cancels) the older.

    An open stream means "the master counts this host live" (README, "Timing"),
    so the master ends the stream of every host it stops counting live (the
    report backstop, DeclareDead), and `close_all` ends every stream (a master
    that stops, a leader that steps down)."""

    def __init__(self, sessions: HeartbeatSessions, hello_timeout: float) -> None:
        self._sessions = sessions
        self._hello_timeout = hello_timeout
        self._streams: dict[str, asyncio.Task] = {}
        self._ending: set[asyncio.Task] = set()  # streams we end (see close)

    def close(self, host: str) -> None:
        """End the host's stream with HOST_OFFLINE. A cancelled handler alone
        would leave the client's call open (grpc.aio sends nothing for it), so
        the handler, told by `_ending`, turns the cancellation into a status. A sessions listener
        (master/server.py wires it) for every host no longer counted live."""
        task = self._streams.get(host)
        # The stream's own task is ending already (its end is what flipped).
        if task is not None and not task.done() and task is not asyncio.current_task():
            self._ending.add(task)
            task.cancel()

    def close_all(self) -> None:
        """End every heartbeat stream: slaves then know they are not counted."""
        for host in list(self._streams):
            self.close(host)

    @rpc_method
    async def Heartbeat(self, request_iterator, context):
        self._sessions.admit()
        try:
            first = await asyncio.wait_for(anext(request_iterator), self._hello_timeout)
        except (asyncio.TimeoutError, StopAsyncIteration):
            raise validation.invalid("hello", "none within the hello timeout") from None
        if first.WhichOneof("kind") != "hello":
            raise validation.invalid("kind", first.WhichOneof("kind") or "empty")
        session, reply = await self._sessions.hello(first.hello)
        self._supersede(session.host)
        goodbye = False
        try:
            yield reply
            async for message in request_iterator:
                kind = message.WhichOneof("kind")
                if kind == "beat":
                    if (answer := self._sessions.beat(session, message.beat)) is not None:
                        yield answer
                elif kind == "goodbye":
                    goodbye = True
                    break
                else:
                    raise validation.invalid("kind", kind or "empty")
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._ending:
                raise  # the client went away, or the server is stopping
            asyncio.current_task().uncancel()  # handled: the stream ends with a status
            raise errors.host_offline(session.host) from None
        finally:
            self._ending.discard(asyncio.current_task())
            self._sessions.end(session, goodbye)
            if self._streams.get(session.host) is asyncio.current_task():
                del self._streams[session.host]

    def _supersede(self, host: str) -> None:
        older = self._streams.get(host)
        if older is not None and not older.done():
            older.cancel()
        self._streams[host] = asyncio.current_task()
