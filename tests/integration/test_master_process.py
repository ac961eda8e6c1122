"""xcp-master as a real process on loopback, called with the generated stubs."""

from __future__ import annotations

import signal
import subprocess
import uuid as uuid_module

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.clients import channel as open_channel, stubs
from tests.support.daemons import MASTER_BIN, MasterProcess
from xcp_control.errors import CATALOGUE, DOMAIN, XcpError, error_info
from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import vm_service_pb2 as vs

T = 10  # deadline of every call, seconds
GIB = 1 << 30
SERVICES = {"xcp.v1.HostService", "xcp.v1.VMService", "xcp.v1.EventService",
            "xcp.v1.LivenessService"}


def create(s, name="vm", memory=GIB, vcpus=1, **kw) -> dm.VM:
    return s.vms.CreateVM(vs.CreateVMRequest(name_label=name, memory=memory, vcpus=vcpus, **kw),
                          timeout=T)


def catalogued(exc: grpc.RpcError) -> XcpError:
    """The catalogued error of an RpcError, checked against the catalogue."""
    info = error_info(exc)
    assert info is not None, f"no ErrorInfo in {exc.code()} {exc.details()!r}"
    assert info.domain == DOMAIN
    err = XcpError.from_rpc_error(exc)
    assert err is not None, f"uncatalogued reason {info.reason}"
    assert exc.code() == CATALOGUE[err.reason].code
    assert exc.details().startswith(err.reason)
    assert "Traceback" not in exc.details()
    return err


def test_master_reports_a_loopback_address(master):
    host, _, port = master.address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert master.stdout_text().startswith(f"xcp-master: listening on {master.address}")


def test_health_is_serving(channel):
    s = stubs(channel)
    for service in ["", *sorted(SERVICES)]:
        reply = s.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=T)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        s.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=T)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel):
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert SERVICES | {"grpc.health.v1.Health"} <= services


def test_create_read_list_destroy_vm(channel):
    s = stubs(channel)
    vm = create(s, "web-01", memory=2 * GIB, vcpus=2, other_config={"owner": "ops"})
    assert str(uuid_module.UUID(vm.uuid)) == vm.uuid
    assert (vm.name_label, vm.memory, vm.vcpus, vm.power_state) == ("web-01", 2 * GIB, 2,
                                                                    dm.HALTED)
    assert dict(vm.other_config) == {"owner": "ops"}
    assert s.vms.GetVM(vs.GetVMRequest(uuid=vm.uuid), timeout=T) == vm
    other = create(s, "web-02")
    listed = s.vms.ListVMs(vs.ListVMsRequest(), timeout=T).vms
    assert [v.uuid for v in listed] == sorted([vm.uuid, other.uuid])
    halted = s.vms.ListVMs(vs.ListVMsRequest(power_state=dm.HALTED), timeout=T).vms
    assert len(halted) == 2
    assert s.vms.ListVMs(vs.ListVMsRequest(power_state=dm.RUNNING), timeout=T).vms == []
    s.vms.DestroyVM(vs.DestroyVMRequest(uuid=vm.uuid), timeout=T)
    assert [v.uuid for v in s.vms.ListVMs(vs.ListVMsRequest(), timeout=T).vms] == [other.uuid]
    assert s.hosts.ListHosts(hs.ListHostsRequest(), timeout=T).hosts == []


def test_errors_carry_error_info(channel):
    s = stubs(channel)
    missing = str(uuid_module.uuid4())
    with pytest.raises(grpc.RpcError) as caught:
        s.vms.GetVM(vs.GetVMRequest(uuid=missing), timeout=T)
    err = catalogued(caught.value)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert (err.reason, err.params) == ("HANDLE_INVALID", {"class": "vm", "uuid": missing})

    with pytest.raises(grpc.RpcError) as caught:
        s.vms.GetVM(vs.GetVMRequest(uuid="not-a-uuid"), timeout=T)
    err = catalogued(caught.value)
    assert (err.reason, err.params) == ("INVALID_VALUE", {"field": "uuid", "value": "not-a-uuid"})

    with pytest.raises(grpc.RpcError) as caught:
        create(s, "", memory=GIB)
    assert catalogued(caught.value).params["field"] == "name_label"

    with pytest.raises(grpc.RpcError) as caught:
        create(s, "x", memory=-1)
    assert catalogued(caught.value).params == {"field": "memory", "value": "-1"}

    for call, request in ((s.hosts.GetHost, hs.GetHostRequest(uuid=missing)),
                          (s.hosts.ForgetHost, hs.ForgetHostRequest(uuid=missing)),
                          (s.hosts.DeclareDead, hs.DeclareDeadRequest(uuid=missing)),
                          (s.hosts.GetHostMetrics, hs.GetHostMetricsRequest(uuid=missing)),
                          (s.vms.DestroyVM, vs.DestroyVMRequest(uuid=missing))):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=T)
        assert catalogued(caught.value).reason == "HANDLE_INVALID"


def test_watch_snapshot_sync_live_and_resume(channel):
    s = stubs(channel)
    first = create(s, "first")
    stream = s.events.Watch(ev.WatchRequest(classes=["vm"]), timeout=T)
    try:
        snapshot = next(stream)
        assert (snapshot.op, snapshot.class_name, snapshot.uuid) == (ev.ADD, "vm", first.uuid)
        assert snapshot.vm == first
        sync = next(stream)
        assert sync.op == ev.SYNC and sync.token and not sync.class_name
        second = create(s, "second")
        added = next(stream)
        assert (added.op, added.uuid, added.vm) == (ev.ADD, second.uuid, second)
        token = added.token
    finally:
        stream.cancel()

    s.vms.DestroyVM(vs.DestroyVMRequest(uuid=first.uuid), timeout=T)
    resumed = s.events.Watch(ev.WatchRequest(classes=["vm"], token=token), timeout=T)
    try:
        gone = next(resumed)
        assert (gone.op, gone.uuid, gone.vm.name_label) == (ev.DEL, first.uuid, "first")
        assert next(resumed).op == ev.SYNC
    finally:
        resumed.cancel()


def test_watch_bad_requests_are_catalogued(channel):
    s = stubs(channel)
    for request, reason in ((ev.WatchRequest(token="garbage"), "INVALID_VALUE"),
                            (ev.WatchRequest(token="otherdb.0"), "EVENTS_LOST"),
                            (ev.WatchRequest(classes=["pond"]), "INVALID_VALUE")):
        with pytest.raises(grpc.RpcError) as caught:
            list(s.events.Watch(request, timeout=T))
        assert catalogued(caught.value).reason == reason


def test_sigterm_is_a_clean_exit_and_data_survives(tmp_path):
    db = tmp_path / "pool.db"
    with MasterProcess(db) as first:
        with open_channel(first.address) as ch:
            vm = create(stubs(ch), "keeper")
        assert first.kill(signal.SIGTERM) == 0
        assert "Traceback" not in first.stderr_text()
    with MasterProcess(db) as second:
        with open_channel(second.address) as ch:
            assert stubs(ch).vms.GetVM(vs.GetVMRequest(uuid=vm.uuid), timeout=T) == vm


@pytest.mark.parametrize("args, message", [
    (["--listen", "nonsense"], "--listen must be HOST:PORT"),
    (["--listen", "127.0.0.1:0", "--dead-after", "0.5"], "dead_after"),
])
def test_bad_settings_fail_loudly(tmp_path, args, message):
    done = subprocess.run([str(MASTER_BIN), "--db", str(tmp_path / "x.db"), *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "listening on" not in done.stdout
