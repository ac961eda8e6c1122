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
from xcp_control.master.pool_ha import PoolHa
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
                                          request.ha_restart_priority, request.ha_restart_order,
                                          boot=validation.boot(request))

    @rpc_method
    async def UpdateVM(self, request, context):
        return await self._pool.update_vm(request.vm, list(request.update_mask.paths))

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
    """GetPool: answered by every master itself (who leads, which masters run).
    SetHaConfig: the leader's (routing passes it on), durable before it answers."""

    def __init__(self, describe, pool_ha: PoolHa) -> None:
        self._describe = describe
        self._pool_ha = pool_ha

    @rpc_method
    async def GetPool(self, request, context):
        return self._describe()

    @rpc_method
    async def SetHaConfig(self, request, context):
        await self._pool_ha.configure(request.enabled, request.host_failures_to_tolerate)
        return self._describe()


_GOODBYE = object()  # outbox markers: the slave said goodbye / half-closed
_CLIENT_DONE = object()


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
        self._outboxes: dict[str, asyncio.Queue] = {}  # host -> its stream's answers

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
        # One queue of answers per stream: the beats' answers (from the reader)
        # and the HA config pushed when it changes (`push`).
        outbox: asyncio.Queue = asyncio.Queue()
        self._outboxes[session.host] = outbox
        reader = asyncio.ensure_future(self._read(request_iterator, session, outbox))
        goodbye = False
        try:
            yield reply
            while True:
                item = await outbox.get()
                if item is _GOODBYE or item is _CLIENT_DONE:
                    goodbye = item is _GOODBYE
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._ending:
                raise  # the client went away, or the server is stopping
            asyncio.current_task().uncancel()  # handled: the stream ends with a status
            raise errors.host_offline(session.host) from None
        finally:
            reader.cancel()
            self._ending.discard(asyncio.current_task())
            self._sessions.end(session, goodbye)
            if self._streams.get(session.host) is asyncio.current_task():
                del self._streams[session.host]
                self._outboxes.pop(session.host, None)

    async def _read(self, request_iterator, session, outbox: asyncio.Queue) -> None:
        """The slave's messages after its Hello, answers into the outbox."""
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("kind")
                if kind == "beat":
                    if (answer := self._sessions.beat(session, message.beat)) is not None:
                        outbox.put_nowait(answer)
                elif kind == "goodbye":
                    outbox.put_nowait(_GOODBYE)
                    return
                else:
                    outbox.put_nowait(validation.invalid("kind", kind or "empty"))
                    return
            outbox.put_nowait(_CLIENT_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream broke: the handler ends it
            outbox.put_nowait(exc)

    def push(self, host: str, message) -> None:
        """Send `message` on the host's open stream (HA config changes)."""
        outbox = self._outboxes.get(host)
        if outbox is not None:
            outbox.put_nowait(message)

    def open_hosts(self) -> list[str]:
        return list(self._outboxes)

    def has_stream(self, host: str) -> bool:
        return host in self._outboxes

    def _supersede(self, host: str) -> None:
        older = self._streams.get(host)
        if older is not None and not older.done():
            older.cancel()
        self._streams[host] = asyncio.current_task()
