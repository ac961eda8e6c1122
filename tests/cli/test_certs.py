"""pool-init, cert-issue and token-issue (cli/certs.py) on a temporary directory (files only)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cryptography import x509

from tests.cli.samples import H1
from xcp_control.security import auth, pki
from xcp_control.cli import app


# -- pool-init, cert-issue, token-issue (files only) ---------------------------------------


def subject(path) -> tuple[str, str, list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sub = pki.subject_of(path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
    except x509.ExtensionNotFound:
        names = []
    return sub.common_name, sub.kind, names


def test_pool_init_creates_the_ca_master_and_clients(tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls), "--address", "10.0.0.5"]) == 0
    out = capsys.readouterr().out
    assert f"written to {tls}" in out and "xcp cert-issue --kind host" in out
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for name in ("ca", "master", "client-admin", "client-viewer", "client-client"):
        assert (tls / f"{name}.pem").exists()
        assert stat.S_IMODE((tls / f"{name}-key.pem").stat().st_mode) == 0o600
    cn, kind, names = subject(tls / "master.pem")
    assert kind == "master" and {"master.xcp", "localhost", "127.0.0.1", "10.0.0.5"} <= set(names)
    assert subject(tls / "client-admin.pem")[:2] == ("admin", "pool-admin")
    assert subject(tls / "client-viewer.pem")[:2] == ("viewer", "read-only")
    assert subject(tls / "client-client.pem")[:2] == ("client", "client")


def test_pool_init_refuses_an_existing_ca(tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    ca = (tls / "ca.pem").read_bytes()
    capsys.readouterr()
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "has a pool CA already" in captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    assert (tls / "ca.pem").read_bytes() == ca  # untouched


def test_certificate_commands_need_a_tls_dir(capsys, monkeypatch):
    monkeypatch.delenv("XCP_TLS_DIR", raising=False)
    for argv in (["pool-init"], ["cert-issue", "--kind", "host", "--name", H1],
                 ["token-issue", "--name", "n", "--role", "read-only"]):
        assert app.main(argv) != 0
        assert "--tls-dir" in capsys.readouterr().err


def test_cert_issue_host_and_client(tmp_path, capsys, monkeypatch):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("XCP_TLS_DIR", str(tls))  # as after `export XCP_TLS_DIR=...`
    assert app.main(["cert-issue", "--kind", "host", "--name", H1]) == 0
    path = tls / f"host-{H1}.pem"
    assert capsys.readouterr().out.strip() == str(path)
    assert subject(path) == (H1, "host", [pki.host_dns_name(H1)])
    assert (tls / f"host-{H1}-key.pem").exists()
    # The certificate chains to the pool CA.
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate(path.read_bytes()).verify_directly_issued_by(ca)

    assert app.main(["cert-issue", "--kind", "read-only", "--name", "auditor"]) == 0
    assert capsys.readouterr().out.strip() == str(tls / "client-auditor.pem")
    assert subject(tls / "client-auditor.pem")[:2] == ("auditor", "read-only")


def test_cert_issue_without_a_ca_or_with_a_bad_kind(tmp_path, capsys):
    assert app.main(["cert-issue", "--tls-dir", str(tmp_path), "--kind", "host",
                     "--name", H1]) == 1
    assert "run xcp pool-init first" in capsys.readouterr().err
    assert app.main(["cert-issue", "--tls-dir", str(tmp_path), "--kind", "root",
                     "--name", "x"]) == 2
    assert app.main(["cert-issue", "--tls-dir", str(tmp_path), "--kind", "host"]) == 2


def test_token_issue_prints_a_token_once(tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    capsys.readouterr()
    assert app.main(["token-issue", "--tls-dir", str(tls), "--name", "alice",
                     "--role", "read-only", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("xcp_") and len(token) > 30 and "\n" not in token
    stored = (tls / "tokens.json").read_text()
    assert token not in stored  # only its digest is kept
    assert stat.S_IMODE(os.stat(tls / "tokens.json").st_mode) == 0o600
    (entry,) = json.loads(stored)["tokens"]
    assert (entry["name"], entry["role"], entry["sha256"]) == \
        ("alice", "read-only", pki.token_digest(token))
    assert entry["expires"] is not None
    assert auth.TokenBook(pki.TlsDir(tls)).identify(token) == auth.Identity("alice", "read-only")

    assert app.main(["token-issue", "--tls-dir", str(tls), "--name", "ops",
                     "--role", "pool-admin"]) == 0
    admin = capsys.readouterr().out.strip()
    assert admin != token
    entries = json.loads((tls / "tokens.json").read_text())["tokens"]
    assert [(e["name"], e["role"], e["expires"]) for e in entries][1] == \
        ("ops", "pool-admin", None)


@pytest.mark.parametrize("argv", [
    ["token-issue", "--name", "n", "--role", "superuser"],
    ["token-issue", "--role", "read-only"],
    ["token-issue", "--name", "n", "--role", "read-only", "--ttl", "soon"],
])
def test_token_issue_usage_errors(argv, capsys):
    assert app.main(argv) == 2
    assert "usage:" in capsys.readouterr().err
