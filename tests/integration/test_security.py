"""A secure pool, attacked from outside: real processes, real TLS."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.clients import run_grpcurl
from tests.support.daemons import MasterProcess, SlaveProcess
from tests.support.pool import make_tls_dir
from tests.support.processes import wait_until
from xcp_control.security import pki
from xcp_control.errors import error_info
from xcp.v1 import host_service_pb2 as hs, host_service_pb2_grpc
from xcp.v1 import liveness_service_pb2 as lv, liveness_service_pb2_grpc
from xcp.v1 import vm_service_pb2 as vs, vm_service_pb2_grpc

GB = 1 << 30


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A TLS pool directory with a CA, the master's and clients' certificates."""
    root = tmp_path_factory.mktemp("secure")
    tls = make_tls_dir(root / "tls")  # master, admin, viewer (and client)
    pki.issue(tls, tls.client("anon"), "anon", "client")
    with MasterProcess(root / "pool.db", log_dir=root,
                       extra_args=["--tls-dir", str(tls.path),
                                   "--token-listen", "127.0.0.1:0"]) as master:
        yield root, tls, master


def secure_channel(tls: pki.TlsDir, address: str, client: str | None,
                   ca: pki.TlsDir | None = None) -> grpc.Channel:
    ca_pem = (ca or tls).ca_cert.read_bytes()
    if client is None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    else:
        paths = tls.client(client)
        creds = grpc.ssl_channel_credentials(ca_pem, paths.key.read_bytes(),
                                             paths.cert.read_bytes())
    return grpc.secure_channel(address, creds,
                               options=[("grpc.ssl_target_name_override", pki.MASTER_NAME)])


def reason_of(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    info = error_info(err.value)
    return info.reason if info else err.value.code().name


def start_slave(root: Path, tls_dir: Path, master: str, host_uuid: str,
                name: str) -> SlaveProcess:
    """A slave of `host_uuid` on the certificates of `tls_dir`, started (not awaited)."""
    state = root / f"{name}-state"
    state.mkdir()
    (state / "host-uuid").write_text(host_uuid + "\n")
    return SlaveProcess(master, state, name, log_dir=root,
                        extra_args=["--tls-dir", str(tls_dir)]).spawn()


def hosts(tls, master) -> dict[str, bool]:
    with secure_channel(tls, master.address, "admin") as ch:
        reply = host_service_pb2_grpc.HostServiceStub(ch).ListHosts(hs.ListHostsRequest(),
                                                                     timeout=5)
    return {h.uuid: m.live for h, m in zip(reply.hosts, reply.host_metrics)}


def test_plaintext_client_is_refused(pool):
    _, _, master = pool
    with grpc.insecure_channel(master.address) as ch:
        stub = host_service_pb2_grpc.HostServiceStub(ch)
        assert reason_of(lambda: stub.ListHosts(hs.ListHostsRequest(), timeout=3)) == \
            "UNAVAILABLE"


def test_client_without_certificate_or_with_foreign_ca_is_refused(pool, tmp_path):
    _, tls, master = pool
    with secure_channel(tls, master.address, None) as ch:  # TLS, but no client cert
        stub = host_service_pb2_grpc.HostServiceStub(ch)
        assert reason_of(lambda: stub.ListHosts(hs.ListHostsRequest(), timeout=3)) == \
            "UNAVAILABLE"
    foreign = pki.TlsDir(tmp_path / "foreign")
    pki.create_ca(foreign)
    pki.issue(foreign, foreign.client("admin"), "admin", "pool-admin")
    with secure_channel(foreign, master.address, "admin", ca=tls) as ch:
        stub = host_service_pb2_grpc.HostServiceStub(ch)
        assert reason_of(lambda: stub.ListHosts(hs.ListHostsRequest(), timeout=3)) == \
            "UNAVAILABLE"


def test_roles_and_tokens(pool):
    _, tls, master = pool
    with secure_channel(tls, master.address, "admin") as ch:
        vm = vm_service_pb2_grpc.VMServiceStub(ch).CreateVM(
            vs.CreateVMRequest(name_label="secure", memory=GB, vcpus=1), timeout=5)
    with secure_channel(tls, master.address, "viewer") as ch:
        vms = vm_service_pb2_grpc.VMServiceStub(ch)
        assert vm.uuid in [v.uuid for v in vms.ListVMs(vs.ListVMsRequest(), timeout=5).vms]
        assert reason_of(lambda: vms.StartVM(vs.StartVMRequest(uuid=vm.uuid), timeout=5)) == \
            "RBAC_PERMISSION_DENIED"
        assert reason_of(lambda: vms.DestroyVM(vs.DestroyVMRequest(uuid=vm.uuid), timeout=5)) \
            == "RBAC_PERMISSION_DENIED"
    good = pki.issue_token(tls, "ops", "pool-admin", ttl_seconds=None)
    expired = pki.issue_token(tls, "old", "pool-admin", ttl_seconds=-1)
    with secure_channel(tls, master.address, "anon") as ch:
        vms = vm_service_pb2_grpc.VMServiceStub(ch)
        assert reason_of(lambda: vms.ListVMs(vs.ListVMsRequest(), timeout=5)) == \
            "SESSION_AUTHENTICATION_FAILED"
        for token in (expired, "xcp_not-a-token"):
            assert reason_of(lambda: vms.ListVMs(
                vs.ListVMsRequest(), timeout=5,
                metadata=[("authorization", f"Bearer {token}")])) == \
                "SESSION_AUTHENTICATION_FAILED"
        listed = vms.ListVMs(vs.ListVMsRequest(), timeout=5,
                             metadata=[("authorization", f"Bearer {good}")])
        assert vm.uuid in [v.uuid for v in listed.vms]


def test_oversized_message_is_refused_without_harming_others(pool):
    _, tls, master = pool
    with secure_channel(tls, master.address, "admin") as ch:
        vms = vm_service_pb2_grpc.VMServiceStub(ch)
        huge = vs.CreateVMRequest(name_label="x" * (5 * 1024 * 1024), memory=GB, vcpus=1)
        assert reason_of(lambda: vms.CreateVM(huge, timeout=10)) == "RESOURCE_EXHAUSTED"
        assert vms.ListVMs(vs.ListVMsRequest(), timeout=5) is not None


def test_slave_with_foreign_or_self_signed_certificate_cannot_join(pool, tmp_path):
    root, tls, master = pool
    before = hosts(tls, master)
    for label, issuer in (("foreign", "foreign-ca"), ("self", None)):
        host_uuid = str(uuid.uuid4())
        rogue = pki.TlsDir(tmp_path / label)
        if issuer:
            pki.create_ca(rogue)
            pki.issue(rogue, rogue.host(host_uuid), host_uuid, "host")
        else:  # a certificate that is its own CA
            pki.create_ca(rogue, pool_name=host_uuid)
            rogue.ca_key.replace(rogue.host(host_uuid).key)
            rogue.ca_cert.rename(rogue.host(host_uuid).cert)
        rogue.ca_cert.write_bytes(tls.ca_cert.read_bytes())  # it trusts the real master
        slave = start_slave(tmp_path, rogue.path, master.address, host_uuid, label)
        try:
            time.sleep(2.0)  # several heartbeat attempts
            assert slave.running  # it keeps trying, it is just never let in
            assert host_uuid not in hosts(tls, master)
        finally:
            slave.kill()
    assert hosts(tls, master) == before


def test_host_impersonating_another_is_refused(pool, tmp_path):
    root, tls, master = pool
    honest, claimed = str(uuid.uuid4()), str(uuid.uuid4())
    pki.issue(tls, tls.host(honest), honest, "host")
    pki.issue(tls, tls.host(claimed), claimed, "host")
    real = start_slave(tmp_path, tls.path, master.address, honest, "honest")
    try:
        wait_until(lambda: hosts(tls, master).get(honest) is True, 10, "the honest host live",
                   interval=0.1)
        # A second slave holding the honest host's certificate but claiming
        # `claimed` as its uuid: its Hello is refused.
        liar_tls = pki.TlsDir(tmp_path / "liar")
        liar_tls.path.mkdir()
        liar_tls.ca_cert.write_bytes(tls.ca_cert.read_bytes())
        for src, dst in ((tls.host(honest), liar_tls.host(claimed)),):
            dst.cert.write_bytes(src.cert.read_bytes())
            dst.key.write_bytes(src.key.read_bytes())
        liar = start_slave(tmp_path, liar_tls.path, master.address, claimed, "liar")
        try:
            time.sleep(2.0)
            assert claimed not in hosts(tls, master)
            assert hosts(tls, master)[honest] is True
        finally:
            liar.kill()
        assert "claiming to be host" in master.stderr_text()
    finally:
        real.kill()


# -- the token endpoint: TLS that asks for no client certificate -------------------


def test_token_endpoint_serves_health_and_reflection_to_anyone_with_the_ca(pool):
    """What a load balancer and grpcurl meet: no certificate, no token."""
    _, tls, master = pool
    with secure_channel(tls, master.token_address, None) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = run_grpcurl("-cacert", str(tls.ca_cert), "-max-time", "10",
                         master.token_address, "list", timeout=30)
    assert listed.returncode == 0 and "xcp.v1.VMService" in listed.stdout, listed.stderr


def test_token_endpoint_admits_by_bearer_token_alone(pool):
    _, tls, master = pool
    admin = pki.issue_token(tls, "ops-bot", "pool-admin", ttl_seconds=None)
    viewer = pki.issue_token(tls, "dashboard", "read-only", ttl_seconds=3600)
    expired = pki.issue_token(tls, "gone", "pool-admin", ttl_seconds=-1)

    def bearer(token):
        return [("authorization", f"Bearer {token}")]

    with secure_channel(tls, master.token_address, None) as ch:
        vms = vm_service_pb2_grpc.VMServiceStub(ch)
        assert reason_of(lambda: vms.ListVMs(vs.ListVMsRequest(), timeout=5)) == \
            "SESSION_AUTHENTICATION_FAILED"
        for token in (expired, "xcp_not-a-token"):
            assert reason_of(lambda: vms.ListVMs(vs.ListVMsRequest(), timeout=5,
                                                 metadata=bearer(token))) == \
                "SESSION_AUTHENTICATION_FAILED"
        vm = vms.CreateVM(vs.CreateVMRequest(name_label="by-token", memory=GB, vcpus=1),
                          timeout=5, metadata=bearer(admin))
        listed = vms.ListVMs(vs.ListVMsRequest(), timeout=5, metadata=bearer(viewer))
        assert vm.uuid in [v.uuid for v in listed.vms]
        assert reason_of(lambda: vms.DestroyVM(vs.DestroyVMRequest(uuid=vm.uuid), timeout=5,
                                               metadata=bearer(viewer))) == \
            "RBAC_PERMISSION_DENIED"


def test_token_endpoint_takes_no_heartbeats_and_no_plaintext(pool):
    """Only a host's certificate may heartbeat, and the token endpoint asks for none:
    a token of any role is refused there; so is a plaintext connection."""
    _, tls, master = pool
    admin = pki.issue_token(tls, "not-a-host", "pool-admin", ttl_seconds=None)
    hello = lv.HeartbeatRequest(hello=lv.Hello(host_uuid=str(uuid.uuid4()), name_label="sneaky",
                                               address="127.0.0.1:1"))
    with secure_channel(tls, master.token_address, None) as ch:
        stream = liveness_service_pb2_grpc.LivenessServiceStub(ch).Heartbeat(
            iter([hello]), timeout=5, metadata=[("authorization", f"Bearer {admin}")])
        assert reason_of(lambda: list(stream)) == "RBAC_PERMISSION_DENIED"
    with grpc.insecure_channel(master.token_address) as ch:
        stub = host_service_pb2_grpc.HostServiceStub(ch)
        assert reason_of(lambda: stub.ListHosts(hs.ListHostsRequest(), timeout=3)) == \
            "UNAVAILABLE"
