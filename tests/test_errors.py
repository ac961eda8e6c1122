"""The error catalogue: equal to errors.proto, statuses that round-trip. No network."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.support.fakes import FakeContext, FakeRpcError, FakeStatus

from xcp_control import errors
from xcp_control.errors import CATALOGUE, DOMAIN, HOST_UNREACHABLE, XcpError, rpc_method
from xcp.v1 import errors_pb2

ERRORS_PROTO = Path(__file__).resolve().parents[1] / "protos" / "xcp" / "v1" / "errors.proto"


def sample_params(reason: str) -> dict[str, str]:
    return {name: f"{name}-value" for name in CATALOGUE[reason].params}


def rpc_error(code: grpc.StatusCode, message: str, details=()) -> FakeRpcError:
    proto = status_pb2.Status(code=code.value[0], message=message, details=list(details))
    return FakeRpcError.from_status(rpc_status.to_status(proto))


def packed(message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


# -- the catalogue and the proto --------------------------------------------------


def test_catalogue_equals_error_reason_enum():
    published = {v.name for v in errors_pb2.ErrorReason.DESCRIPTOR.values if v.number != 0}
    assert set(CATALOGUE) == published
    assert errors_pb2.ErrorReason.Name(0) == "ERROR_REASON_UNSPECIFIED"


def _proto_comments() -> dict[str, str]:
    """Each ErrorReason value's comment in errors.proto."""
    text = ERRORS_PROTO.read_text()
    body = text[text.index("enum ErrorReason"):]
    comments, pending = {}, []
    for line in body.splitlines()[1:]:
        line = line.strip()
        if line.startswith("//"):
            pending.append(line[2:].strip())
        elif match := re.match(r"([A-Z_]+)\s*=\s*\d+;", line):
            comments[match.group(1)] = " ".join(pending)
            pending = []
        elif line.startswith("}"):
            break
    return comments


@pytest.mark.parametrize("reason", sorted(CATALOGUE))
def test_proto_documents_each_reason_as_the_catalogue_does(reason):
    comment = _proto_comments()[reason]
    entry = CATALOGUE[reason]
    match = re.match(r"([A-Z_]+); metadata: ([a-z_, ]+)\.", comment)
    assert match, f"errors.proto comment of {reason} does not start 'CODE; metadata: ...'"
    assert match.group(1) == entry.code.name
    assert tuple(p.strip() for p in match.group(2).split(",")) == entry.params


def test_catalogue_entries_are_well_formed():
    for name, entry in CATALOGUE.items():
        assert entry.name == name
        assert re.fullmatch(r"[A-Z][A-Z_]*", name)
        assert isinstance(entry.code, grpc.StatusCode) and entry.code != grpc.StatusCode.OK
        assert entry.params and len(set(entry.params)) == len(entry.params)
        assert entry.doc
    assert HOST_UNREACHABLE <= set(CATALOGUE)


def test_design_table_codes():
    # The codes DESIGN.md promises clients.
    codes = {name: entry.code for name, entry in CATALOGUE.items()}
    assert codes["HOST_OFFLINE"] == grpc.StatusCode.FAILED_PRECONDITION
    assert codes["CANNOT_CONTACT_HOST"] == grpc.StatusCode.UNAVAILABLE
    assert codes["OPERATION_TIMED_OUT"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert codes["HANDLE_INVALID"] == grpc.StatusCode.NOT_FOUND
    assert codes["INVALID_VALUE"] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes["HOST_NOT_ENOUGH_FREE_MEMORY"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert codes["OTHER_OPERATION_IN_PROGRESS"] == grpc.StatusCode.ABORTED
    assert codes["INTERNAL_ERROR"] == grpc.StatusCode.INTERNAL


# -- XcpError ----------------------------------------------------------------------


def test_unknown_reason_or_wrong_params_are_refused():
    with pytest.raises(ValueError, match="not in the error catalogue"):
        XcpError("NO_SUCH_REASON", host="h")
    with pytest.raises(ValueError):
        XcpError("HOST_OFFLINE")  # missing host
    with pytest.raises(ValueError):
        XcpError("HOST_OFFLINE", host="h", extra="x")
    with pytest.raises(ValueError):
        XcpError("HANDLE_INVALID", uuid="u")  # missing class


def test_message_starts_with_reason_and_names_params():
    err = XcpError("HANDLE_INVALID", **{"class": "vm"}, uuid="u1")
    assert err.message.startswith("HANDLE_INVALID: ")
    assert "class=vm" in err.message and "uuid=u1" in err.message
    assert str(err) == err.message
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.params == {"class": "vm", "uuid": "u1"}


def test_params_are_strings_in_catalogue_order():
    err = XcpError("VM_BAD_POWER_STATE", actual=2, vm="v", expected="HALTED")
    assert list(err.params.items()) == [("vm", "v"), ("expected", "HALTED"), ("actual", "2")]


@pytest.mark.parametrize("reason", sorted(CATALOGUE))
def test_to_status_carries_error_info(reason):
    err = XcpError(reason, **sample_params(reason))
    status = err.to_status()
    assert status.code == CATALOGUE[reason].code
    assert status.details.startswith(reason)
    proto = rpc_status.from_call(FakeRpcError.from_status(status))
    assert proto.code == status.code.value[0]
    (detail,) = proto.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == (reason, DOMAIN)
    assert dict(info.metadata) == sample_params(reason)


@pytest.mark.parametrize("reason", sorted(CATALOGUE))
def test_from_rpc_error_round_trip(reason):
    err = XcpError(reason, **sample_params(reason))
    back = XcpError.from_rpc_error(FakeRpcError.from_status(err.to_status()))
    assert back is not None
    assert (back.reason, back.params, back.code, back.message) == (
        err.reason, err.params, err.code, err.message)


def test_round_trip_keeps_awkward_values():
    value = "naïve \"quoted\" , = (paren) \n newline " + "x" * 300
    err = XcpError("INVALID_VALUE", field="name_label", value=value)
    back = XcpError.from_rpc_error(FakeRpcError.from_status(err.to_status()))
    assert back.params == {"field": "name_label", "value": value}


def test_from_rpc_error_without_our_error_info_is_none():
    plain = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert XcpError.from_rpc_error(plain) is None
    assert errors.error_info(plain) is None
    # No trailers at all (a transport error).
    bare = FakeRpcError.from_status(FakeStatus(grpc.StatusCode.UNAVAILABLE, "connection reset"))
    assert XcpError.from_rpc_error(bare) is None
    foreign = error_details_pb2.ErrorInfo(reason="HOST_OFFLINE", domain="example.com",
                                          metadata={"host": "h"})
    assert XcpError.from_rpc_error(
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "x", [packed(foreign)])) is None
    unknown = error_details_pb2.ErrorInfo(reason="NEW_REASON", domain=DOMAIN)
    uncatalogued = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "x", [packed(unknown)])
    assert XcpError.from_rpc_error(uncatalogued) is None
    assert errors.error_info(uncatalogued).reason == "NEW_REASON"


def test_from_rpc_error_finds_error_info_among_other_details():
    info = error_details_pb2.ErrorInfo(reason="HOST_OFFLINE", domain=DOMAIN,
                                       metadata={"host": "h1"})
    other = error_details_pb2.DebugInfo(detail="ignored")
    err = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "HOST_OFFLINE: x",
                    [packed(other), packed(info)])
    back = XcpError.from_rpc_error(err)
    assert back.reason == "HOST_OFFLINE" and back.params == {"host": "h1"}


def test_from_rpc_error_with_inconsistent_status_is_none():
    # Trailers claiming another code than the call's: rpc_status refuses them.
    info = error_details_pb2.ErrorInfo(reason="HOST_OFFLINE", domain=DOMAIN,
                                       metadata={"host": "h1"})
    liar = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "m", [packed(info)])
    liar.code = lambda: grpc.StatusCode.UNAVAILABLE
    assert XcpError.from_rpc_error(liar) is None


def test_missing_metadata_key_comes_back_empty():
    info = error_details_pb2.ErrorInfo(reason="HANDLE_INVALID", domain=DOMAIN,
                                       metadata={"uuid": "u"})
    back = XcpError.from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "m", [packed(info)]))
    assert back.params == {"class": "", "uuid": "u"}


# -- rpc_method: what leaves a servicer ---------------------------------------------


class Servicer:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    @rpc_method
    async def Unary(self, request, context):
        if self.exc:
            raise self.exc
        return "answer"

    @rpc_method
    async def Stream(self, request, context):
        yield 1
        if self.exc:
            raise self.exc
        yield 2


def call_unary(exc):
    context = FakeContext()

    async def main():
        return await Servicer(exc).Unary(None, context)
    try:
        result = asyncio.run(main())
    except grpc.aio.AbortError:
        result = None
    return result, context


def call_stream(exc):
    context = FakeContext()
    items = []

    async def main():
        async for item in Servicer(exc).Stream(None, context):
            items.append(item)
    try:
        asyncio.run(main())
    except grpc.aio.AbortError:
        pass
    return items, context


def aborted_error(context: FakeContext) -> XcpError:
    """The catalogued error a client would decode from what the servicer aborted with."""
    return XcpError.from_rpc_error(FakeRpcError.from_status(FakeStatus(*context.aborted)))


def test_unary_success_passes_through():
    result, context = call_unary(None)
    assert result == "answer" and context.aborted is None


def test_unary_xcp_error_becomes_its_status():
    _, context = call_unary(XcpError("HOST_OFFLINE", host="h1"))
    code, details, _ = context.aborted
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("HOST_OFFLINE")
    assert aborted_error(context).params == {"host": "h1"}


def test_unary_bug_becomes_internal_error_without_trace(caplog):
    _, context = call_unary(KeyError("secret internals"))
    code, details, _ = context.aborted
    assert code == grpc.StatusCode.INTERNAL
    assert details.startswith("INTERNAL_ERROR")
    assert "Traceback" not in details and "secret internals" not in details
    err = aborted_error(context)
    assert err.reason == "INTERNAL_ERROR" and "KeyError" in err.params["detail"]
    assert "Traceback" not in err.params["detail"]
    assert any("unexpected error" in r.getMessage() for r in caplog.records)  # logged


def test_stream_errors_after_items():
    items, context = call_stream(XcpError("EVENTS_LOST", token="t"))
    assert items == [1]
    assert context.aborted[0] == grpc.StatusCode.OUT_OF_RANGE
    items, context = call_stream(RuntimeError("boom"))
    assert items == [1] and context.aborted[0] == grpc.StatusCode.INTERNAL
    assert "boom" not in context.aborted[1]
    items, context = call_stream(None)
    assert items == [1, 2] and context.aborted is None
