"""xcp-master through grpcurl (server reflection, no proto files), as an operator would.

grpcurl 1.8.6 exits with 64 + the gRPC status code on an RPC error and prints
64-bit integers as JSON strings. Its JSON field names are read here in both
spellings (proto names, which 1.8.6 prints, and camelCase).
"""

from __future__ import annotations

import json
import uuid as uuid_module

import pytest

from tests.support.clients import channel as open_channel, grpcurl, stubs
from xcp_control.errors import CATALOGUE, DOMAIN
from xcp.v1 import vm_service_pb2 as vs

GRPCURL_RPC_ERROR = 64  # grpcurl's exit status is this plus the gRPC status code


def field(obj: dict, name: str):
    """obj[name] under its proto name or its camelCase JSON name."""
    head, *rest = name.split("_")
    camel = head + "".join(part.title() for part in rest)
    return obj[name] if name in obj else obj[camel]


def ok(done) -> dict | str:
    assert done.returncode == 0, f"grpcurl exit {done.returncode}: {done.stderr}"
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.stdout


def rpc_error(done, code: int) -> dict:
    """The status grpcurl printed with -format-error (JSON, on stderr)."""
    assert done.returncode == GRPCURL_RPC_ERROR + code, (done.returncode, done.stderr)
    status = json.loads(done.stderr)
    assert status["code"] == code
    return status


@pytest.fixture(scope="module")
def address(module_master) -> str:
    return module_master.address


def test_list_services(address):
    listed = set(ok(grpcurl(address, "list")).split())
    assert {"xcp.v1.HostService", "xcp.v1.VMService", "xcp.v1.EventService",
            "xcp.v1.LivenessService", "grpc.health.v1.Health"} <= listed


def test_describe_vm_service(address):
    described = ok(grpcurl(address, "describe", "xcp.v1.VMService"))
    for method in ("CreateVM", "GetVM", "ListVMs", "DestroyVM", "StartVM"):
        assert f"rpc {method} " in described


def test_health_check(address):
    assert ok(grpcurl(address, "grpc.health.v1.Health/Check"))["status"] == "SERVING"
    reply = ok(grpcurl(address, "grpc.health.v1.Health/Check",
                       data='{"service": "xcp.v1.VMService"}'))
    assert reply["status"] == "SERVING"


def test_create_then_read_vm(address):
    request = {"name_label": "from-grpcurl", "memory": "1073741824", "vcpus": 2,
               "other_config": {"team": "qa"}}
    created = ok(grpcurl(address, "xcp.v1.VMService/CreateVM", data=json.dumps(request)))
    vm_uuid = created["uuid"]
    assert str(uuid_module.UUID(vm_uuid)) == vm_uuid
    assert field(created, "name_label") == "from-grpcurl"
    assert field(created, "power_state") == "HALTED"
    assert created["memory"] == "1073741824"  # int64 as a JSON string
    assert created["vcpus"] == "2"
    assert field(created, "other_config") == {"team": "qa"}

    read = ok(grpcurl(address, "xcp.v1.VMService/GetVM", data=json.dumps({"uuid": vm_uuid})))
    assert read == created
    listed = ok(grpcurl(address, "xcp.v1.VMService/ListVMs",
                        data='{"powerState": "HALTED"}'))  # camelCase input works too
    assert vm_uuid in [vm["uuid"] for vm in listed["vms"]]
    # The same object through the generated stubs.
    with open_channel(address) as ch:
        vm = stubs(ch).vms.GetVM(vs.GetVMRequest(uuid=vm_uuid), timeout=10)
    assert (vm.name_label, vm.memory, vm.vcpus) == ("from-grpcurl", 1 << 30, 2)


def test_error_info_reason(address):
    missing = str(uuid_module.uuid4())
    done = grpcurl(address, "xcp.v1.VMService/GetVM", flags=["-format-error"],
                   data=json.dumps({"uuid": missing}))
    status = rpc_error(done, CATALOGUE["HANDLE_INVALID"].code.value[0])
    assert status["message"].startswith("HANDLE_INVALID")
    (info,) = status["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (info["domain"], info["reason"]) == (DOMAIN, "HANDLE_INVALID")
    assert info["metadata"] == {"class": "vm", "uuid": missing}


def test_invalid_value_through_grpcurl(address):
    done = grpcurl(address, "xcp.v1.VMService/CreateVM", flags=["-format-error"],
                   data='{"name_label": "x", "memory": "-5", "vcpus": 1}')
    status = rpc_error(done, CATALOGUE["INVALID_VALUE"].code.value[0])
    (info,) = status["details"]
    assert info["reason"] == "INVALID_VALUE"
    assert info["metadata"] == {"field": "memory", "value": "-5"}


def test_default_error_output_names_the_reason(address):
    done = grpcurl(address, "xcp.v1.VMService/GetVM", data='{"uuid": "nope"}')
    assert done.returncode == GRPCURL_RPC_ERROR + 3  # INVALID_ARGUMENT
    assert "INVALID_VALUE" in done.stderr and "Traceback" not in done.stderr
