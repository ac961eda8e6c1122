"""Opening a channel to a peer of the pool: mutual TLS that checks the peer's
certificate name (credentials.expect_name), or plaintext without a TLS directory."""

from __future__ import annotations

import ipaddress
import socket

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


def multi_target(addresses: str) -> str:
    """The gRPC target for `HOST:PORT[,HOST:PORT...]`: one address unchanged;
    several as one `ipv4:`/`ipv6:` list (names resolved once, here), so that
    the channel's pick_first moves to the next master when one refuses."""
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if len(parts) <= 1:
        return addresses.strip()
    resolved = [r for part in parts for r in resolve(*_split(part))]
    family = "ipv6" if all(r.startswith("[") for r in resolved) else "ipv4"
    return f"{family}:" + ",".join(resolved)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def resolve(host: str, port: int) -> list[str]:
    """HOST:PORT strings for every IPv4 address of `host` (an IP as is)."""
    try:
        ip = ipaddress.ip_address(host)
        return [f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return sorted({f"{info[4][0]}:{port}" for info in infos})
