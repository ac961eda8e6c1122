"""Who is calling, and may they (xapi's RBAC, with two client roles).

With TLS on, every connection is mutual TLS with a certificate of the pool CA
(a plaintext or foreign-CA peer never gets past the handshake), except on the
master's token endpoint, where the TLS asks for no client certificate and so
only a bearer token can name the caller (tls.py). Then each call is admitted
by `AuthInterceptor`:

- reflection and health are open to every connection, so grpcurl and load
  balancers work;
- a bearer token (`authorization: Bearer ...`), when sent, names the caller
  and its role; a wrong or expired one is refused;
- otherwise the certificate names the caller: its kind is a role
  (`pool-admin`, `read-only`), a slave (`host`) or the `master`; a `client`
  certificate alone proves nothing about the caller: UNAUTHENTICATED;
- read-only callers may list, get and watch; pool-admin callers may do
  everything; only hosts may stream heartbeats (and only as themselves, which
  heartbeats.py checks against the Hello); on a slave only the master may call;
- delegation, with several masters: a follower that passes a client's call on
  to the leader (master/routing.py) names the client it authenticated in the
  `xcp-on-behalf-of` header (`ROLE:NAME`), and the leader takes that identity
  from a caller whose certificate is a master's, and from nobody else (the
  header from any other caller is ignored; a follower drops it from what its
  own clients send).

The identity of the caller is available to servicers as `CALLER.get()`.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import grpc

from xcp_control.security import pki
from xcp_control import errors
from xcp_control.errors import XcpError, abort

log = logging.getLogger(__name__)

OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
READ_METHODS = frozenset({
    "/xcp.v1.HostService/ListHosts", "/xcp.v1.HostService/GetHost",
    "/xcp.v1.HostService/GetHostMetrics", "/xcp.v1.VMService/GetVM",
    "/xcp.v1.VMService/ListVMs", "/xcp.v1.EventService/Watch",
    "/xcp.v1.PoolService/GetPool",
})
HOST_METHODS = frozenset({"/xcp.v1.LivenessService/Heartbeat"})
ON_BEHALF_OF = "xcp-on-behalf-of"  # ROLE:NAME of the client a follower passes on for
DELEGABLE_ROLES = frozenset(pki.ROLES)  # a master speaks for clients, never for hosts


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    name: str  # certificate common name (a host's uuid) or token name
    role: str  # pool-admin, read-only, host or master


CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("caller", default=None)


def unauthenticated(detail: str) -> XcpError:
    return errors.session_authentication_failed(detail)


def denied(identity: Identity, method: str) -> XcpError:
    return errors.rbac_permission_denied(identity.role, method)


class TokenBook:
    """Bearer tokens from tokens.json, re-read when the file changes."""

    def __init__(self, tls: pki.TlsDir, clock: Callable[[], float] = time.time) -> None:
        self._tls = tls
        self._clock = clock
        self._mtime: float | None = None
        self._by_digest: dict[str, dict] = {}

    def identify(self, token: str) -> Identity:
        entry = self._entries().get(pki.token_digest(token))
        if entry is None:
            raise unauthenticated("unknown bearer token")
        expires = entry.get("expires")
        if expires is not None and self._clock() >= expires:
            raise unauthenticated(f"bearer token of {entry['name']} expired")
        return Identity(entry["name"], entry["role"])

    def _entries(self) -> dict[str, dict]:
        try:
            mtime = os.stat(self._tls.tokens).st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._by_digest = {e["sha256"]: e for e in pki.load_tokens(self._tls)}
            self._mtime = mtime
        return self._by_digest


class Authoriser:
    """Decides, for one call, who the caller is and whether it may proceed."""

    def __init__(self, tokens: TokenBook | None, allowed: Callable[[Identity, str], bool]) -> None:
        self._tokens = tokens
        self._allowed = allowed
        self._subjects: dict[bytes, pki.Subject] = {}

    def admit(self, method: str, auth_context: dict, metadata: Iterable[tuple]) -> Identity | None:
        """The caller's identity (None for an open service), or an XcpError."""
        if method.split("/")[1] in OPEN_SERVICES:
            return None
        identity = self._identify(auth_context, metadata)
        if not self._allowed(identity, method):
            raise denied(identity, method)
        return identity

    def _identify(self, auth_context: dict, metadata: Iterable[tuple]) -> Identity:
        for key, value in metadata or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer" or not token or self._tokens is None:
                    raise unauthenticated("authorization must be 'Bearer <token>'")
                return self._tokens.identify(token.strip())
        subject = self._subject(auth_context)
        if subject is None or subject.kind not in (*pki.ROLES, "host", "master"):
            raise unauthenticated("no credentials: send a bearer token or use a role certificate")
        if subject.kind == "master":
            delegated = _delegated(metadata)
            if delegated is not None:
                return delegated
        return Identity(subject.common_name, subject.kind)

    def _subject(self, auth_context: dict) -> pki.Subject | None:
        pems = auth_context.get("x509_pem_cert") or []
        if not pems:
            return None
        pem = pems[0]
        if pem not in self._subjects:
            if len(self._subjects) > 10_000:
                self._subjects.clear()
            self._subjects[pem] = pki.subject_of(pem)
        return self._subjects[pem]


def _delegated(metadata: Iterable[tuple]) -> Identity | None:
    """The client a master passes a call on for (ON_BEHALF_OF), if it names one."""
    for key, value in metadata or ():
        if key == ON_BEHALF_OF:
            role, _, name = str(value).partition(":")
            if role not in DELEGABLE_ROLES or not name:
                raise unauthenticated(f"{ON_BEHALF_OF} must be ROLE:NAME with a client role")
            return Identity(name, role)
    return None


def on_behalf_of(identity: Identity) -> tuple[str, str]:
    """The header a follower adds to a call it passes on for `identity`."""
    return ON_BEHALF_OF, f"{identity.role}:{identity.name}"


def master_policy(identity: Identity, method: str) -> bool:
    """What each role may call on the master."""
    if method in HOST_METHODS:
        return identity.role == "host"
    if identity.role == "pool-admin":
        return True
    return identity.role == "read-only" and method in READ_METHODS


PEER_METHODS = frozenset({"/xcp.v1.SlaveService/PeerStatus"})


def slave_policy(identity: Identity, method: str) -> bool:
    """On a slave, only the master may call, but for PeerStatus, which the
    other hosts ask too (HA's liveset rule) and which reveals only whether and
    how long this host has been connected."""
    if method in PEER_METHODS:
        return identity.role in ("master", "host")
    return identity.role == "master"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call with an Authoriser before its handler runs."""

    def __init__(self, authoriser: Authoriser) -> None:
        self._authoriser = authoriser

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.split("/")[1] in OPEN_SERVICES:
            return handler
        return _guarded(handler, details.method, self._authoriser)


def _guarded(handler: grpc.RpcMethodHandler, method: str,
             authoriser: Authoriser) -> grpc.RpcMethodHandler:
    async def admit(context) -> bool:
        try:
            identity = authoriser.admit(method, context.auth_context(),
                                        context.invocation_metadata())
        except XcpError as err:
            log.warning("refused %s from %s: %s", method, context.peer(), err.message)
            await abort(context, err)
            return False
        CALLER.set(identity)
        return True

    def unary(behavior):
        async def run(request, context):
            await admit(context)
            return await behavior(request, context)
        return run

    def streaming(behavior):
        async def run(request, context):
            await admit(context)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result
        return run

    kind = (handler.request_streaming, handler.response_streaming)
    factory = {
        (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary, unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream, streaming),
        (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary, unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream, streaming),
    }[kind]
    make, behavior, wrap = factory
    return make(wrap(behavior), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
