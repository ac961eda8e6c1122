"""What a process needs to take part in a secure pool, built from its TLS
directory in one place for master and slave alike: the server's credentials,
the interceptors that check callers, and the credentials of its own calls.
Without a TLS directory, everything is plaintext and nobody is checked (for
loopback experiments only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from xcp_control.rpc import credentials
from xcp_control.security import auth, pki


class MissingCertificate(Exception):
    """The TLS directory has no certificate for this process; says how to make one."""


@dataclass(frozen=True)
class Security:
    server_credentials: grpc.ServerCredentials | None = None  # None: plaintext port
    interceptors: list = field(default_factory=list)  # caller checks, outermost first
    channel_credentials: grpc.ChannelCredentials | None = None  # for calls we make
    token_server_credentials: grpc.ServerCredentials | None = None  # the token endpoint

    @property
    def secure(self) -> bool:
        return self.server_credentials is not None


def for_master(tls_dir: str) -> Security:
    """Mutual TLS as `master.xcp`; callers checked against the master's policy
    (certificate roles and bearer tokens)."""
    if not tls_dir:
        return Security()
    tls = pki.TlsDir(tls_dir)
    authoriser = auth.Authoriser(auth.TokenBook(tls), auth.master_policy)
    return Security(credentials.server_credentials(tls, tls.master()),
                    [auth.AuthInterceptor(authoriser)],
                    credentials.channel_credentials(tls, tls.master()),
                    credentials.token_server_credentials(tls, tls.master()))


def for_host(tls_dir: str, host_uuid: str) -> Security:
    """Mutual TLS as `<host uuid>.host.xcp`; only the master may call."""
    if not tls_dir:
        return Security()
    tls = pki.TlsDir(tls_dir)
    paths = tls.host(host_uuid)
    if not paths.cert.exists():
        raise MissingCertificate(f"no certificate for host {host_uuid} in {tls_dir}: issue one "
                                 f"with `xcp cert-issue --kind host --name {host_uuid}`")
    guard = auth.AuthInterceptor(auth.Authoriser(None, auth.slave_policy))
    return Security(credentials.server_credentials(tls, paths), [guard],
                    credentials.channel_credentials(tls, paths))
