"""gRPC credentials for a secure pool, from a TLS directory (see pki.py).

Servers require a client certificate of the pool CA (grpcio offers no
"verify if given": a plaintext or foreign-CA peer fails the handshake). The
one exception is the master's token endpoint (`--token-listen`): TLS that asks
for no client certificate, where a caller names itself with a bearer token
(auth.py) and only health and reflection are open without one.
Clients verify the server by a fixed name rather than by the address they
dial: slaves and tools check that the master's certificate says `master.xcp`,
the master checks that a slave's says `<host uuid>.host.xcp`, so a slave
cannot stand in for another host even on the other's address.
"""

from __future__ import annotations

import grpc

from xcp_control.security import pki

from xcp_control.rpc.options import Options


def server_credentials(tls: pki.TlsDir, paths: pki.Paths) -> grpc.ServerCredentials:
    ca, cert, key = tls.read(paths)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def token_server_credentials(tls: pki.TlsDir, paths: pki.Paths) -> grpc.ServerCredentials:
    """TLS that authenticates the server only: for callers holding a token."""
    _, cert, key = tls.read(paths)
    return grpc.ssl_server_credentials([(key, cert)], require_client_auth=False)


def channel_credentials(tls: pki.TlsDir, paths: pki.Paths) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read(paths)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def expect_name(name: str) -> Options:
    """Verify the server's certificate against `name`, whatever address we dial."""
    return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


def to_master() -> Options:
    return expect_name(pki.MASTER_NAME)
