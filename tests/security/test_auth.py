"""Who may call what, decided with no network."""

import pytest

from xcp_control.security import pki
from xcp_control.security.auth import Authoriser, Identity, TokenBook, master_policy, slave_policy
from xcp_control.errors import XcpError

HOST = "0b5e7c8e-1111-4222-8333-444455556666"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    tls = pki.TlsDir(tmp_path_factory.mktemp("tls"))
    pki.create_ca(tls)
    for name, kind in [("admin", "pool-admin"), ("viewer", "read-only"), ("anon", "client")]:
        pki.issue(tls, tls.client(name), name, kind)
    pki.issue(tls, tls.host(HOST), HOST, "host")
    pki.issue(tls, tls.master(), "master", "master")
    return tls


def ctx(tls, paths):
    return {"x509_pem_cert": [paths.cert.read_bytes()]}


def reason(fn):
    with pytest.raises(XcpError) as err:
        fn()
    return err.value.reason


def test_certificate_kinds_map_to_roles(tls):
    auth = Authoriser(TokenBook(tls), master_policy)
    admin = auth.admit("/xcp.v1.VMService/StartVM", ctx(tls, tls.client("admin")), [])
    assert admin == Identity("admin", "pool-admin")
    viewer = auth.admit("/xcp.v1.VMService/ListVMs", ctx(tls, tls.client("viewer")), [])
    assert viewer == Identity("viewer", "read-only")
    host = auth.admit("/xcp.v1.LivenessService/Heartbeat", ctx(tls, tls.host(HOST)), [])
    assert host == Identity(HOST, "host")


def test_read_only_cannot_mutate_and_hosts_only_heartbeat(tls):
    auth = Authoriser(TokenBook(tls), master_policy)
    assert reason(lambda: auth.admit("/xcp.v1.VMService/StartVM",
                                     ctx(tls, tls.client("viewer")), [])) == "RBAC_PERMISSION_DENIED"
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs",
                                     ctx(tls, tls.host(HOST)), [])) == "RBAC_PERMISSION_DENIED"
    assert reason(lambda: auth.admit("/xcp.v1.LivenessService/Heartbeat",
                                     ctx(tls, tls.client("admin")), [])) == "RBAC_PERMISSION_DENIED"


def test_client_certificate_alone_is_unauthenticated(tls):
    auth = Authoriser(TokenBook(tls), master_policy)
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", ctx(tls, tls.client("anon")),
                                     [])) == "SESSION_AUTHENTICATION_FAILED"
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", {}, [])) == \
        "SESSION_AUTHENTICATION_FAILED"


def test_open_services_need_nothing(tls):
    auth = Authoriser(TokenBook(tls), master_policy)
    assert auth.admit("/grpc.health.v1.Health/Check", {}, []) is None
    assert auth.admit("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", {},
                      []) is None


def test_tokens_name_the_caller_and_expire(tls):
    now = [1_000.0]
    book = TokenBook(tls, clock=lambda: now[0])
    auth = Authoriser(book, master_policy)
    admin_token = pki.issue_token(tls, "ops", "pool-admin", ttl_seconds=None)
    viewer_token = pki.issue_token(tls, "dash", "read-only", ttl_seconds=60)
    anon = ctx(tls, tls.client("anon"))
    bearer = lambda t: [("authorization", f"Bearer {t}")]  # noqa: E731
    assert auth.admit("/xcp.v1.VMService/StartVM", anon, bearer(admin_token)).name == "ops"
    now[0] = pki._now().timestamp() + 30
    assert auth.admit("/xcp.v1.VMService/ListVMs", anon, bearer(viewer_token)).role == "read-only"
    now[0] += 31
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", anon,
                                     bearer(viewer_token))) == "SESSION_AUTHENTICATION_FAILED"
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", anon,
                                     bearer("xcp_wrong"))) == "SESSION_AUTHENTICATION_FAILED"
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", anon,
                                     [("authorization", "Basic abc")])) == \
        "SESSION_AUTHENTICATION_FAILED"


def test_only_the_master_may_call_a_slave(tls):
    auth = Authoriser(None, slave_policy)
    assert auth.admit("/xcp.v1.SlaveService/StartDomain", ctx(tls, tls.master()), []).role == \
        "master"
    assert reason(lambda: auth.admit("/xcp.v1.SlaveService/StartDomain",
                                     ctx(tls, tls.client("admin")), [])) == "RBAC_PERMISSION_DENIED"


def test_certificates_carry_the_names_clients_verify(tls):
    from cryptography import x509
    host_cert = x509.load_pem_x509_certificate(tls.host(HOST).cert.read_bytes())
    sans = host_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [pki.host_dns_name(HOST)]
    assert pki.subject_of(tls.host(HOST).cert.read_bytes()) == pki.Subject(HOST, "host")
    with pytest.raises(FileExistsError):
        pki.create_ca(tls)
    assert oct(tls.ca_key.stat().st_mode & 0o777) == "0o600"


def test_a_master_passes_a_call_on_for_the_client_it_names(tls):
    auth = Authoriser(TokenBook(tls), master_policy)
    master = ctx(tls, tls.master())
    on_behalf = [("xcp-on-behalf-of", "read-only:viewer")]
    assert auth.admit("/xcp.v1.VMService/ListVMs", master, on_behalf) == \
        Identity("viewer", "read-only")
    # The client's role is what counts, not the master's.
    assert reason(lambda: auth.admit("/xcp.v1.VMService/StartVM", master,
                                     on_behalf)) == "RBAC_PERMISSION_DENIED"
    assert auth.admit("/xcp.v1.VMService/StartVM", master,
                      [("xcp-on-behalf-of", "pool-admin:admin")]) == Identity("admin", "pool-admin")
    # A master alone acts for nobody; it never speaks for a host or a master.
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", master, [])) == \
        "RBAC_PERMISSION_DENIED"
    for bad in ("host:" + HOST, "master:m2", "pool-admin:", "nonsense"):
        assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", master, [
            ("xcp-on-behalf-of", bad)])) == "SESSION_AUTHENTICATION_FAILED", bad


def test_nobody_but_a_master_may_speak_for_another(tls):
    auth = Authoriser(TokenBook(tls), master_policy)
    forged = [("xcp-on-behalf-of", "pool-admin:mallory")]
    assert auth.admit("/xcp.v1.VMService/ListVMs", ctx(tls, tls.client("viewer")), forged) == \
        Identity("viewer", "read-only")
    assert reason(lambda: auth.admit("/xcp.v1.VMService/StartVM", ctx(tls, tls.client("viewer")),
                                     forged)) == "RBAC_PERMISSION_DENIED"
    assert reason(lambda: auth.admit("/xcp.v1.VMService/ListVMs", ctx(tls, tls.client("anon")),
                                     forged)) == "SESSION_AUTHENTICATION_FAILED"
    assert reason(lambda: auth.admit("/xcp.v1.VMService/StartVM", ctx(tls, tls.host(HOST)),
                                     forged)) == "RBAC_PERMISSION_DENIED"
