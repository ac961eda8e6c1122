"""Bad input against a real master: hypothesis-generated requests (random strings,
huge names, invalid uuids, out-of-range integers and enums). Every answer is a success
or a catalogued error (never INTERNAL_ERROR, never a stack trace), and the server
stays up and keeps answering."""

from __future__ import annotations

import dataclasses
import uuid as uuid_module

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

from tests.support.clients import channel as open_channel, stubs
from xcp_control import validation
from xcp_control.errors import CATALOGUE, DOMAIN, XcpError, error_info
from xcp_control.settings import MasterSettings
from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import vm_service_pb2 as vs

T = 10  # deadline of every call, seconds
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
INT32 = st.integers(-(1 << 31), (1 << 31) - 1)

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- strategies ------------------------------------------------------------------------

uuids = st.uuids().map(str)
almost_uuids = st.one_of(
    uuids.map(str.upper),
    uuids.map(lambda u: u.replace("-", "")),
    uuids.map(lambda u: "{" + u + "}"),
    uuids.map(lambda u: u[:-1]),
    uuids.map(lambda u: u + "0"),
    uuids.map(lambda u: " " + u),
    uuids.map(lambda u: u[:8] + "+" + u[9:]),
    uuids.map(lambda u: "urn:uuid:" + u),
)
huge = st.builds(lambda n, ch: ch * n, st.integers(256, 300_000),
                 st.sampled_from(["x", "é", "名", "\x00", " ", "\n", "🙂"]))
strings = st.one_of(st.text(max_size=80), st.just(""), almost_uuids, uuids, huge,
                    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=400))
uuid_fields = st.one_of(uuids, almost_uuids, strings)
counts = st.one_of(INT64, st.integers(-3, 3), st.integers(1, 1 << 40), st.sampled_from(
    [validation.MAX_MEMORY, validation.MAX_MEMORY + 1, validation.MAX_VCPUS,
     validation.MAX_VCPUS + 1, (1 << 63) - 1, -(1 << 63)]))
enums = st.one_of(INT32, st.integers(-1, 6))
configs = st.dictionaries(st.one_of(st.text(max_size=40), huge), st.one_of(st.text(max_size=40),
                                                                          huge), max_size=70)
classes = st.lists(st.one_of(st.sampled_from(["vm", "host", "host_metrics"]), strings),
                   max_size=4)
tokens = st.one_of(st.just(""), strings, st.integers(0, 1 << 70).map(lambda g: f"x.{g}"))


# -- checks -------------------------------------------------------------------------------


def check_error(exc: grpc.RpcError) -> str:
    """A catalogued client error, as the contract says; its reason."""
    details = exc.details() or ""
    assert "Traceback" not in details and 'File "' not in details, details
    info = error_info(exc)
    assert info is not None, f"uncatalogued answer {exc.code()}: {details[:200]!r}"
    assert info.domain == DOMAIN
    assert info.reason in CATALOGUE, info.reason
    assert exc.code() == CATALOGUE[info.reason].code
    assert details.startswith(info.reason)
    assert XcpError.from_rpc_error(exc) is not None
    assert info.reason != "INTERNAL_ERROR", f"server bug: {details}"
    assert len(details) < 2000, "error messages echo bounded values"
    return info.reason


MAX_REQUEST = {f.name: f.default for f in dataclasses.fields(MasterSettings)}["max_message_bytes"]


def readable(request) -> None:
    """Only requests the master reads: a larger one is refused by gRPC itself before any
    handler runs (RESOURCE_EXHAUSTED without ErrorInfo, the contract that
    test_oversized_request_is_refused_by_the_transport checks), and the strategies can
    build one now and then (up to 70 config entries of up to 1.2 MB each)."""
    assume(request.ByteSize() <= MAX_REQUEST)


def call(method, request):
    """The answer, or the catalogued reason of the error (checked)."""
    try:
        return method(request, timeout=T)
    except grpc.RpcError as exc:
        return check_error(exc)


@pytest.fixture(scope="module")
def s(module_master):
    with open_channel(module_master.address) as ch:
        yield stubs(ch)


# -- properties ---------------------------------------------------------------------------


@FUZZ
@given(name=strings, memory=counts, vcpus=counts, affinity=st.one_of(st.just(""), uuid_fields),
       other_config=configs)
def test_create_vm(s, name, memory, vcpus, affinity, other_config):
    request = vs.CreateVMRequest(name_label=name, memory=memory, vcpus=vcpus,
                                 affinity=affinity, other_config=other_config)
    readable(request)
    answer = call(s.vms.CreateVM, request)
    event(answer if isinstance(answer, str) else "created")
    if isinstance(answer, str):
        assert answer in {"INVALID_VALUE", "HANDLE_INVALID"}  # bad field, unknown affinity
        return
    assert (answer.name_label, answer.memory, answer.vcpus) == (name, memory, vcpus)
    assert answer.power_state == dm.HALTED
    assert call(s.vms.GetVM, vs.GetVMRequest(uuid=answer.uuid)) == answer
    assert call(s.vms.DestroyVM, vs.DestroyVMRequest(uuid=answer.uuid)) == vs.DestroyVMResponse()


@FUZZ
@given(uuid=uuid_fields)
def test_calls_naming_an_object(s, uuid):
    for method, request in (
            (s.vms.GetVM, vs.GetVMRequest(uuid=uuid)),
            (s.vms.DestroyVM, vs.DestroyVMRequest(uuid=uuid)),
            (s.hosts.GetHost, hs.GetHostRequest(uuid=uuid)),
            (s.hosts.GetHostMetrics, hs.GetHostMetricsRequest(uuid=uuid)),
            (s.hosts.DeclareDead, hs.DeclareDeadRequest(uuid=uuid)),
            (s.hosts.ForgetHost, hs.ForgetHostRequest(uuid=uuid))):
        # No such object exists (random uuids), so each is a catalogued error.
        assert call(method, request) in {"INVALID_VALUE", "HANDLE_INVALID"}


@FUZZ
@given(host=st.one_of(st.just(""), uuid_fields), power_state=enums)
def test_list_vms(s, host, power_state):
    answer = call(s.vms.ListVMs, vs.ListVMsRequest(host=host, power_state=power_state))
    event(answer if isinstance(answer, str) else "listed")
    if isinstance(answer, str):
        assert answer == "INVALID_VALUE"
        return
    for vm in answer.vms:
        assert not power_state or vm.power_state == power_state


@settings(FUZZ, max_examples=80)
@given(wanted=classes, token=tokens)
def test_watch(s, wanted, token):
    request = ev.WatchRequest(classes=wanted, token=token)
    readable(request)
    stream = s.events.Watch(request, timeout=T)
    try:
        for message in stream:  # a valid request: snapshot or replay, then SYNC
            if message.op == ev.SYNC:
                break
            assert message.class_name in (set(wanted) or {"vm", "host", "host_metrics"})
        else:
            pytest.fail("the stream ended without SYNC or an error")
    except grpc.RpcError as exc:
        assert check_error(exc) in {"INVALID_VALUE", "EVENTS_LOST"}
    finally:
        stream.cancel()


def test_oversized_request_is_refused_by_the_transport(s):
    with pytest.raises(grpc.RpcError) as caught:
        s.vms.CreateVM(vs.CreateVMRequest(name_label="x" * (5 << 20), memory=1, vcpus=1),
                       timeout=T)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Traceback" not in (caught.value.details() or "")


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab",
                                     b"\x0a\x02\xc3\x28\x10\x01\x18\x01"],
                         ids=["bad-tag", "truncated", "bad-utf8"])
def test_undecodable_request_bytes(s, module_master, payload):
    with open_channel(module_master.address) as ch:
        raw = ch.unary_unary("/xcp.v1.VMService/CreateVM")
        with pytest.raises(grpc.RpcError) as caught:
            raw(payload, timeout=T)
    assert "Traceback" not in (caught.value.details() or "")
    assert module_master.running
    assert check_error(caught.value) == "INVALID_VALUE"
    assert error_info(caught.value).metadata["field"] == "request"


def test_server_still_answers(module_master, s):
    # Runs last in this module: after everything above the master is up and sane.
    assert module_master.running
    assert s.health.Check(health_pb2.HealthCheckRequest(), timeout=T).status == \
        health_pb2.HealthCheckResponse.SERVING
    vm = s.vms.CreateVM(vs.CreateVMRequest(name_label="after-fuzz", memory=1, vcpus=1),
                        timeout=T)
    assert s.vms.GetVM(vs.GetVMRequest(uuid=vm.uuid), timeout=T) == vm
    missing = str(uuid_module.uuid4())
    assert call(s.vms.GetVM, vs.GetVMRequest(uuid=missing)) == "HANDLE_INVALID"
    stderr = module_master.stderr_text()
    assert "unexpected error" not in stderr  # no INTERNAL_ERROR was logged
