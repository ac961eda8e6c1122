"""A second master on a port in use fails loudly instead of sharing it
(grpcio turns SO_REUSEPORT on by default: a second server would start silently
and steal connections). The first master is unaffected."""

from __future__ import annotations

import socket

import pytest
from grpc_health.v1 import health_pb2

from tests.support.clients import channel, stubs
from tests.support.daemons import MasterProcess
from tests.support.processes import ProcessStartError
from xcp.v1 import vm_service_pb2 as vs

T = 10


def assert_serving(address: str, expected_vms: int | None = None) -> None:
    with channel(address) as ch:
        s = stubs(ch)
        reply = s.health.Check(health_pb2.HealthCheckRequest(), timeout=T)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        s.vms.CreateVM(vs.CreateVMRequest(name_label="still-mine", memory=1, vcpus=1),
                       timeout=T)
        if expected_vms is not None:
            vms = s.vms.ListVMs(vs.ListVMsRequest(), timeout=T).vms
            assert len(vms) == expected_vms


def second_master_fails(db, listen: str, tmp_path) -> MasterProcess:
    second = MasterProcess(db, listen=listen, log_dir=tmp_path)
    with pytest.raises(ProcessStartError, match="exited"):
        second.start(timeout=20)
    assert second.returncode not in (0, None)
    err = second.stderr_text()
    assert f"cannot listen on {listen}" in err, err
    assert "Traceback" not in err
    assert "listening on" not in second.stdout_text()
    return second


@pytest.mark.parametrize("same_db", [False, True], ids=["other-db", "same-db"])
def test_second_master_on_same_port_exits_non_zero(master_factory, tmp_path, same_db):
    first = master_factory(tmp_path / "first.db")
    assert_serving(first.address)
    db = first.db_path if same_db else tmp_path / "second.db"
    second_master_fails(db, first.address, tmp_path)
    assert first.running
    assert_serving(first.address, expected_vms=2)  # and nothing was stolen or lost


def test_port_held_by_another_program(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        second_master_fails(tmp_path / "pool.db", listen, tmp_path)
