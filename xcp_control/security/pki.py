"""The pool's certificates: a pool CA and the certificates it signs.

Every connection in a secure pool is mutual TLS with certificates of the pool
CA. A certificate says who its holder is (the subject's common name) and what
it is (the organizational unit, one of `KINDS`):

- `master`: the master (server to clients and slaves, client to slaves);
  its names are `master.xcp`, `localhost`, 127.0.0.1 and any given address;
- `host`: a slave; its common name is the host uuid and its DNS name
  `<uuid>.host.xcp`, which the master checks when it connects, so a slave can
  neither claim nor serve as another host;
- `pool-admin`, `read-only`: a person or program with that role;
- `client`: a connection only; the caller names itself with a bearer token.

Bearer tokens are kept as SHA-256 digests with a role and an expiry in
`tokens.json`; the token itself is shown once, when issued.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MASTER_NAME = "master.xcp"
ROLES = ("pool-admin", "read-only")
KINDS = ("master", "host", "client", *ROLES)
CA_DAYS = 3650
LEAF_DAYS = 365


def host_dns_name(host_uuid: str) -> str:
    """The name a host's certificate carries and the master verifies."""
    return f"{host_uuid}.host.xcp"


@dataclass(frozen=True)
class Paths:
    """Where the files of one identity live in a TLS directory."""

    cert: Path
    key: Path


class TlsDir:
    """A directory of pool certificates (mode 0700; keys 0600)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca-key.pem"

    @property
    def tokens(self) -> Path:
        return self.path / "tokens.json"

    def identity(self, name: str) -> Paths:
        return Paths(self.path / f"{name}.pem", self.path / f"{name}-key.pem")

    def master(self) -> Paths:
        return self.identity("master")

    def host(self, host_uuid: str) -> Paths:
        return self.identity(f"host-{host_uuid}")

    def client(self, name: str) -> Paths:
        return self.identity(f"client-{name}")

    def read(self, paths: Paths) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes for one identity."""
        return self.ca_cert.read_bytes(), paths.cert.read_bytes(), paths.key.read_bytes()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str, kind: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xcp pool"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(tls: TlsDir, pool_name: str = "xcp pool CA") -> None:
    """Create the pool CA; refuses to overwrite one."""
    if tls.ca_cert.exists():
        raise FileExistsError(f"{tls.ca_cert} exists: this directory has a pool CA already")
    tls.path.mkdir(parents=True, exist_ok=True)
    os.chmod(tls.path, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(pool_name, "ca")
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(tls.ca_key, _key_pem(key), private=True)
    _write(tls.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _sans(kind: str, common_name: str, addresses: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    if kind == "master":
        names += [x509.DNSName(MASTER_NAME), x509.DNSName("localhost"),
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    elif kind == "host":
        names.append(x509.DNSName(host_dns_name(common_name)))
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    return names


def issue(tls: TlsDir, paths: Paths, common_name: str, kind: str,
          addresses: tuple[str, ...] = ()) -> Paths:
    """Sign a certificate of `kind` for `common_name` with the pool CA."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name, kind)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(minutes=5))
               .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    sans = _sans(kind, common_name, addresses)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(paths.key, _key_pem(key), private=True)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths


@dataclass(frozen=True)
class Subject:
    """Who a certificate names."""

    common_name: str
    kind: str


def subject_of(cert_pem: bytes) -> Subject:
    cert = x509.load_pem_x509_certificate(cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return Subject(str(cn[0].value) if cn else "", str(ou[0].value) if ou else "")


# -- bearer tokens -------------------------------------------------------------

def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(tls: TlsDir, name: str, role: str, ttl_seconds: float | None) -> str:
    """Add a token with `role` to tokens.json; return the token (shown once)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    token = "xcp_" + secrets.token_urlsafe(32)
    expires = None if ttl_seconds is None else _now().timestamp() + ttl_seconds
    entries = load_tokens(tls)
    entries.append({"name": name, "role": role, "sha256": token_digest(token),
                    "expires": expires})
    _write(tls.tokens, json.dumps({"tokens": entries}, indent=2).encode(), private=True)
    return token


def load_tokens(tls: TlsDir) -> list[dict]:
    if not tls.tokens.exists():
        return []
    return list(json.loads(tls.tokens.read_text()).get("tokens", []))
