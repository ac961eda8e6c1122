"""Opening a channel to a peer of the pool: mutual TLS that checks the peer's
certificate name (credentials.expect_name), or plaintext without a TLS directory."""

from __future__ import annotations

import grpc

from xcp_control.rpc.credentials import expect_name
from xcp_control.rpc.options import Options


def open_channel(target: str, options: Options, credentials: grpc.ChannelCredentials | None,
                 server_name: str) -> grpc.aio.Channel:
    """A channel to `target`: mutual TLS expecting `server_name` when
    credentials are given, plaintext otherwise."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options + expect_name(server_name))
