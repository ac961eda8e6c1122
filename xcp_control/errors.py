"""The error catalogue: every error an xcp API call can return, as data.

Each entry names an xapi-style reason, the gRPC status code it travels with,
the metadata keys it carries and what it means. An `XcpError` becomes a gRPC
status whose details hold a `google.rpc.ErrorInfo` (domain "xcp.v1"), so
clients in any language switch on `ErrorInfo.reason`; the same names are
published in protos/xcp/v1/errors.proto as the `ErrorReason` enum (a test
keeps the two equal).
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "xcp.v1"
log = logging.getLogger(__name__)
Code = grpc.StatusCode


@dataclass(frozen=True)
class Reason:
    """One entry of the catalogue."""

    name: str  # the xapi-style reason, e.g. HOST_OFFLINE
    code: grpc.StatusCode  # the gRPC status code it travels with
    params: tuple[str, ...]  # metadata keys, all required, in this order
    doc: str  # what it means, for humans and the status message


CATALOGUE: dict[str, Reason] = {
    r.name: r
    for r in (
        Reason("HOST_OFFLINE", Code.FAILED_PRECONDITION, ("host",),
               "the host is marked not live"),
        Reason("CANNOT_CONTACT_HOST", Code.UNAVAILABLE, ("host",),
               "the host did not answer within the contact budget"),
        Reason("OPERATION_TIMED_OUT", Code.DEADLINE_EXCEEDED, ("host", "operation"),
               "the host answered but the operation outlived its timeout"),
        Reason("HANDLE_INVALID", Code.NOT_FOUND, ("class", "uuid"),
               "no such object"),
        Reason("INVALID_VALUE", Code.INVALID_ARGUMENT, ("field", "value"),
               "malformed input"),
        Reason("VM_BAD_POWER_STATE", Code.FAILED_PRECONDITION, ("vm", "expected", "actual"),
               "the VM is in the wrong power state for this operation"),
        Reason("HOST_DISABLED", Code.FAILED_PRECONDITION, ("host",),
               "the host is disabled"),
        Reason("HOST_NOT_ENOUGH_FREE_MEMORY", Code.RESOURCE_EXHAUSTED, ("vm", "host"),
               "the host has not enough free memory for the VM"),
        Reason("NO_HOSTS_AVAILABLE", Code.FAILED_PRECONDITION, ("vm",),
               "no live, enabled host can take the VM"),
        Reason("OTHER_OPERATION_IN_PROGRESS", Code.ABORTED, ("class", "uuid", "operation"),
               "a conflicting operation is running on the object"),
        Reason("INTERNAL_ERROR", Code.INTERNAL, ("detail",),
               "internal error (logged by the server)"),
        Reason("EVENTS_LOST", Code.OUT_OF_RANGE, ("token",),
               "events were lost: watch again with an empty token"),
        Reason("HOST_IS_LIVE", Code.FAILED_PRECONDITION, ("host",),
               "the host is live"),
        Reason("SESSION_AUTHENTICATION_FAILED", Code.UNAUTHENTICATED, ("detail",),
               "no valid credentials"),
        Reason("RBAC_PERMISSION_DENIED", Code.PERMISSION_DENIED, ("role", "operation"),
               "the caller's role does not allow this operation"),
        Reason("TOO_BUSY", Code.RESOURCE_EXHAUSTED, ("detail",),
               "the master is too busy: retry later, with backoff"),
        Reason("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN", Code.FAILED_PRECONDITION, ("vm",),
               "the operation would leave too little room to restart every protected VM "
               "after ha_host_failures_to_tolerate host failures"),
        Reason("HOST_IS_SLAVE", Code.UNAVAILABLE, ("master",),
               "this master is not the pool's leader: call the master named (empty: none "
               "is elected yet)"),
        Reason("STALE_MASTER", Code.FAILED_PRECONDITION, ("epoch", "seen"),
               "the call comes from a deposed leader: a newer epoch has been seen"),
        Reason("HYPERVISOR_UNAVAILABLE", Code.UNAVAILABLE, ("host", "detail"),
               "the host's hypervisor connection is down; the slave is re-opening it"),
        Reason("HOST_FENCED", Code.FAILED_PRECONDITION, ("host",),
               "the host fenced itself (HA: it lost the leader's acknowledgement) and "
               "refuses domain operations until the leader acknowledges it again"),
    )
}

# Reasons meaning "the host could not be reached", for callers (the CLI's
# exit code, retry loops) that treat them alike.
HOST_UNREACHABLE = frozenset({"HOST_OFFLINE", "CANNOT_CONTACT_HOST"})


class XcpError(Exception):
    """A catalogued API error: a reason and its metadata."""

    def __init__(self, reason: str, **params: Any) -> None:
        entry = CATALOGUE.get(reason)
        if entry is None:
            raise ValueError(f"{reason!r} is not in the error catalogue")
        if set(params) != set(entry.params):
            raise ValueError(f"{reason} takes {entry.params}, got {tuple(params)}")
        self.reason = reason
        self.params = {k: str(params[k]) for k in entry.params}
        super().__init__(self.message)

    @property
    def code(self) -> grpc.StatusCode:
        return CATALOGUE[self.reason].code

    @property
    def message(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.reason}: {CATALOGUE[self.reason].doc} ({detail})"

    def to_status(self) -> grpc.Status:
        """The gRPC status, with ErrorInfo in its details."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.params)
        detail = any_pb2.Any()
        detail.Pack(info)
        proto = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return rpc_status.to_status(proto)

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> "XcpError | None":
        """The catalogued error an RpcError carries, or None if it carries none."""
        info = error_info(exc)
        if info is None or info.reason not in CATALOGUE:
            return None
        params = {k: info.metadata.get(k, "") for k in CATALOGUE[info.reason].params}
        return cls(info.reason, **params)


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The xcp.v1 ErrorInfo in an RpcError's status details, if any."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details disagree with code/message: not ours
        return None
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == DOMAIN:
            return info
    return None


# -- one constructor per reason -------------------------------------------------
# Master and slave raise through these, so the same reason always carries the
# same parameters, shaped the same way (values echoed back are truncated).

SHOWN = 64  # longest client-supplied value echoed back in an error


def host_offline(host: str) -> XcpError:
    return XcpError("HOST_OFFLINE", host=host)


def cannot_contact_host(host: str) -> XcpError:
    return XcpError("CANNOT_CONTACT_HOST", host=host)


def operation_timed_out(host: str, operation: str) -> XcpError:
    return XcpError("OPERATION_TIMED_OUT", host=host, operation=operation)


def handle_invalid(class_name: str, uuid: str) -> XcpError:
    return XcpError("HANDLE_INVALID", **{"class": class_name}, uuid=str(uuid)[:SHOWN])


def invalid_value(field: str, value: object) -> XcpError:
    return XcpError("INVALID_VALUE", field=field, value=str(value)[:SHOWN])


def vm_bad_power_state(vm: str, expected: str, actual: str) -> XcpError:
    """`expected` and `actual` are PowerState names (model.state_name)."""
    return XcpError("VM_BAD_POWER_STATE", vm=vm, expected=expected, actual=actual)


def host_disabled(host: str) -> XcpError:
    return XcpError("HOST_DISABLED", host=host)


def host_not_enough_free_memory(vm: str, host: str) -> XcpError:
    return XcpError("HOST_NOT_ENOUGH_FREE_MEMORY", vm=vm, host=host)


def no_hosts_available(vm: str) -> XcpError:
    return XcpError("NO_HOSTS_AVAILABLE", vm=vm)


def other_operation_in_progress(class_name: str, uuid: str, operation: str) -> XcpError:
    return XcpError("OTHER_OPERATION_IN_PROGRESS", **{"class": class_name}, uuid=uuid,
                    operation=operation)


def internal(detail: str) -> XcpError:
    return XcpError("INTERNAL_ERROR", detail=detail)


def events_lost(token: str) -> XcpError:
    return XcpError("EVENTS_LOST", token=str(token)[:SHOWN])


def host_is_live(host: str) -> XcpError:
    return XcpError("HOST_IS_LIVE", host=host)


def session_authentication_failed(detail: str) -> XcpError:
    return XcpError("SESSION_AUTHENTICATION_FAILED", detail=detail)


def rbac_permission_denied(role: str, operation: str) -> XcpError:
    return XcpError("RBAC_PERMISSION_DENIED", role=role, operation=operation)


def too_busy(detail: str) -> XcpError:
    return XcpError("TOO_BUSY", detail=detail)


def ha_operation_would_break_failover_plan(vm: str) -> XcpError:
    return XcpError("HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN", vm=vm)
def host_is_slave(master: str) -> XcpError:
    return XcpError("HOST_IS_SLAVE", master=master)


def stale_master(epoch: int, seen: int) -> XcpError:
    return XcpError("STALE_MASTER", epoch=epoch, seen=seen)


def host_fenced(host: str) -> XcpError:
    return XcpError("HOST_FENCED", host=host)


def hypervisor_unavailable(host: str, detail: str) -> XcpError:
    return XcpError("HYPERVISOR_UNAVAILABLE", host=host, detail=detail)


async def abort(context: grpc.aio.ServicerContext, err: XcpError) -> None:
    """End the RPC with the error's status (raises AbortError)."""
    status = err.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


class Undecodable:
    """Stands in for request bytes that are not the expected message (the
    serving layer's lenient deserializer returns it): answered INVALID_VALUE
    rather than grpcio's UNKNOWN and a logged traceback."""


UNDECODABLE = Undecodable()


def _check_decoded(request: object) -> None:
    if request is UNDECODABLE:
        raise invalid_value("request", "undecodable message bytes")


def _as_xcp_error(exc: Exception, method: str) -> XcpError:
    if isinstance(exc, XcpError):
        return exc
    log.exception("unexpected error in %s", method)
    return internal(f"{type(exc).__name__} in {method}")


def rpc_method(func: Callable) -> Callable:
    """Decorate an async servicer method (unary or server-streaming) so that an
    XcpError becomes its catalogued status and any other exception becomes a
    logged INTERNAL_ERROR: no stack trace ever reaches a client."""
    name = func.__qualname__
    if inspect.isasyncgenfunction(func):
        @functools.wraps(func)
        async def stream_wrapper(self, request, context):
            try:
                _check_decoded(request)
                async for item in func(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - translated, never leaked
                await abort(context, _as_xcp_error(exc, name))
        return stream_wrapper

    @functools.wraps(func)
    async def unary_wrapper(self, request, context):
        try:
            _check_decoded(request)
            return await func(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated, never leaked
            await abort(context, _as_xcp_error(exc, name))
    return unary_wrapper
