"""The CLI's connection to the master: one channel, deadlines on every call,
a spinner on a terminal, and gRPC failures turned into one-line errors with
the documented exit codes.

Exit codes (also in `xcp --help`):

    0  success
    1  the master answered with an error (any other reason)
    2  usage: bad arguments or options
    3  the target host is unreachable: HOST_OFFLINE or CANNOT_CONTACT_HOST
    4  the master itself cannot be reached (refused, no answer, connection lost)
  130  interrupted (Ctrl-C) before the call completed
"""

from __future__ import annotations

import re
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import grpc

from xcp.v1 import event_service_pb2_grpc, host_service_pb2 as hs, host_service_pb2_grpc
from xcp.v1 import pool_service_pb2_grpc, vm_service_pb2 as vs, vm_service_pb2_grpc
from xcp_control.cli.render import error_line
from xcp_control.rpc import credentials as tls
from xcp_control.rpc.channels import multi_target
from xcp_control.security import pki
from xcp_control.errors import HOST_UNREACHABLE, error_info

OK = 0
API_ERROR = 1
USAGE = 2
HOST_UNREACHABLE_EXIT = 3
MASTER_UNREACHABLE = 4
INTERRUPTED = 130

EXIT_CODES = (
    (OK, "success"),
    (API_ERROR, "the master answered with an error (error: REASON key=value ...)"),
    (USAGE, "bad arguments or options"),
    (HOST_UNREACHABLE_EXIT, "the target host is unreachable: HOST_OFFLINE or "
                            "CANNOT_CONTACT_HOST"),
    (MASTER_UNREACHABLE, "the master cannot be reached (refused, no answer, connection lost)"),
    (INTERRUPTED, "interrupted (Ctrl-C) before the call completed"),
)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}$")
_MAX_MESSAGE = 256 * 1024 * 1024  # a host-list of a very large pool still fits


class CliError(Exception):
    """A failure to report on stderr (one line) and exit with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def looks_like_uuid(text: str) -> bool:
    return bool(_UUID.match(text))


def classify(exc: grpc.RpcError, master: str, connected: bool,
             timeout: float | None, secure: bool = True) -> CliError:
    """The CliError for a failed call.

    A catalogued error (ErrorInfo from the master) prints as
    `error: REASON key=value ...`; HOST_OFFLINE and CANNOT_CONTACT_HOST exit 3,
    the others 1. With no ErrorInfo, the failure is the transport's:
    UNAVAILABLE means the master is not reachable (exit 4), as does a deadline
    that expired before a connection was ever made; a deadline that expired
    while connected is the master being slow (exit 1)."""
    info = error_info(exc)
    # A plaintext client that a TLS master hangs up on sees "socket closed".
    hint = ""
    if not secure and _short(exc.details() or "") == "socket closed":
        hint = " (a secure pool? give --tls-dir or set XCP_TLS_DIR)"
    if info is not None:
        code = HOST_UNREACHABLE_EXIT if info.reason in HOST_UNREACHABLE else API_ERROR
        return CliError(code, error_line(info.reason, dict(info.metadata)))
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        what = "lost the connection to" if connected else "cannot reach"
        return CliError(MASTER_UNREACHABLE,
                        f"error: {what} the master at {master}: {_short(details)}{hint}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if not connected:
            return CliError(MASTER_UNREACHABLE,
                            f"error: cannot reach the master at {master}: "
                            f"no connection within {timeout:g}s")
        return CliError(API_ERROR, f"error: DEADLINE_EXCEEDED: no answer from the master "
                                   f"within {timeout:g}s (see --timeout)")
    if code == grpc.StatusCode.CANCELLED:
        return CliError(INTERRUPTED, "error: cancelled")
    name = code.name if code is not None else "UNKNOWN"
    return CliError(API_ERROR, f"error: {name}: {_short(details) or 'no details'}")


_GISTS = ("connection refused", "connection reset by peer", "socket closed",
          "no route to host", "network is unreachable", "domain name not found")


def _short(details: str) -> str:
    """The gist of a transport error, without grpc's debug dump:
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:...:
    Failed to connect to remote host: Connection refused" -> "connection refused"."""
    first = details.splitlines()[0].strip() if details else ""
    return next((gist for gist in _GISTS if gist in first.lower()), first)


class Connection:
    """A channel to the master and its stubs. `call()` runs a unary RPC with a
    deadline (and a spinner when `progress` is given and stderr is a
    terminal); every failure becomes a CliError."""

    def __init__(self, address: str, timeout: float,
                 spinner: Callable[[str], Any] | None = None,
                 credentials: grpc.ChannelCredentials | None = None, token: str = "") -> None:
        self.address = address
        self.timeout = timeout
        self._spinner = spinner
        self._ready = threading.Event()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.secure = credentials is not None
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE),
                   ("grpc.enable_retries", 0)]
        # Several masters (a,b,c): one channel over all of them, moving on
        # when one refuses; any master answers (followers pass calls on).
        target = multi_target(address)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials,
                                               options=options + tls.to_master())
        self.channel.subscribe(self._on_state)
        self.hosts = host_service_pb2_grpc.HostServiceStub(self.channel)
        self.vms = vm_service_pb2_grpc.VMServiceStub(self.channel)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)
        self.pools = pool_service_pb2_grpc.PoolServiceStub(self.channel)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self._ready.set()

    @property
    def connected(self) -> bool:
        """Whether the channel was ever connected to the master."""
        return self._ready.is_set()

    def close(self) -> None:
        self.channel.unsubscribe(self._on_state)
        self.channel.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def error(self, exc: grpc.RpcError, timeout: float | None = None) -> CliError:
        return classify(exc, self.address, self.connected,
                        self.timeout if timeout is None else timeout, self.secure)

    def call(self, method, request, progress: str | None = None,
             timeout: float | None = None):
        timeout = self.timeout if timeout is None else timeout
        future = method.future(request, timeout=timeout, metadata=self.metadata)
        status = (self._spinner(progress) if progress and self._spinner is not None
                  else nullcontext())
        try:
            with status:
                return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
        except grpc.RpcError as exc:
            raise self.error(exc, timeout) from None

    # -- names ---------------------------------------------------------------

    def host_uuid(self, ref: str) -> str:
        """A host uuid from a uuid or a name_label (as xe accepts either)."""
        if looks_like_uuid(ref):
            return ref.lower()
        listing = self.call(self.hosts.ListHosts, hs.ListHostsRequest())
        return _unique("host", ref, [h.uuid for h in listing.hosts if h.name_label == ref])

    def vm_uuid(self, ref: str) -> str:
        """A VM uuid from a uuid or a name_label."""
        if looks_like_uuid(ref):
            return ref.lower()
        listing = self.call(self.vms.ListVMs, vs.ListVMsRequest())
        return _unique("vm", ref, [v.uuid for v in listing.vms if v.name_label == ref])

    def host_names(self) -> dict[str, str]:
        """uuid -> name_label of every host, or {} if that fails (names are a
        courtesy in human output, never a reason to fail)."""
        try:
            listing = self.call(self.hosts.ListHosts, hs.ListHostsRequest(),
                                timeout=min(self.timeout, 5.0))
        except CliError:
            return {}
        return {h.uuid: h.name_label for h in listing.hosts}


def client_credentials(tls_dir: str, identity: str,
                       ca_cert: str = "") -> grpc.ChannelCredentials | None:
    """How to speak to the master: TLS checked against `ca_cert` presenting no
    certificate (the master's token endpoint, where the bearer token names the
    caller); else mutual TLS as client `identity` of the pool in `tls_dir`;
    else None, plaintext."""
    if ca_cert:
        try:
            return grpc.ssl_channel_credentials(root_certificates=Path(ca_cert).read_bytes())
        except OSError as exc:
            raise CliError(USAGE, f"error: cannot read --ca-cert {ca_cert}: "
                                  f"{exc.strerror or exc}") from None
    if not tls_dir:
        return None
    pool = pki.TlsDir(tls_dir)
    paths = pool.client(identity)
    if not paths.cert.exists():
        raise CliError(USAGE, f"error: no certificate for identity {identity!r} in {tls_dir} "
                              f"(see xcp pool-init, xcp cert-issue)")
    return tls.channel_credentials(pool, paths)


def _unique(kind: str, ref: str, found: list[str]) -> str:
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError(API_ERROR, f"error: HANDLE_INVALID class={kind} uuid={ref} "
                                  f"(no {kind} has this uuid or name)")
    raise CliError(API_ERROR, f"error: {len(found)} {kind}s are named {ref!r}: "
                              f"use a uuid ({', '.join(sorted(found))})")
