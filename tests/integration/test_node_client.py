"""The Node.js client (clients/node/xcp-client.js) against a real pool: it
loads ../../protos with @grpc/proto-loader, lists hosts, creates and starts a
VM, and after a slave is SIGKILLed reads HOST_OFFLINE (and the host) from the
google.rpc.ErrorInfo in the grpc-status-details-bin trailer. Against a secure
pool (./scripts/pool's default) it speaks mutual TLS with the certificates of
--tls-dir / $XCP_TLS_DIR as --identity / $XCP_IDENTITY (default admin).

Skips with the reason when node or npm is missing, except under CI (env CI
set), where that is a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.support.clients import client_env
from tests.support.node_client import NODE_DIR, node_or_skip
from tests.support.pool import RunningPool
from tests.support.processes import free_port

CLIENT = NODE_DIR / "xcp-client.js"


@pytest.fixture(scope="module")
def node() -> str:
    return node_or_skip()


def run(node: str, master: str, *args: str, env: dict | None = None,
        timeout: float = 60, cwd=NODE_DIR) -> subprocess.CompletedProcess:
    """The client as a subprocess; `env` (default: the test's, without its
    XCP_* settings) with XCP_MASTER=master."""
    full_env = dict(client_env() if env is None else env, XCP_MASTER=master)
    return subprocess.run([node, str(CLIENT), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout)


def test_lock_file_pins_the_grpc_packages():
    package = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    deps = package["dependencies"]
    for name in ("@grpc/grpc-js", "@grpc/proto-loader", "protobufjs"):
        assert deps[name][0].isdigit(), f"{name} is not pinned: {deps[name]}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == deps[name]


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_node_client_lists_creates_starts_and_reads_host_offline(node, tmp_path, tls):
    with RunningPool(tmp_path, slaves=2, tls=tls) as pool:
        env = pool.env()  # XCP_TLS_DIR on the secure pool

        def call(*args: str) -> subprocess.CompletedProcess:
            return run(node, pool.address, *args, env=env)

        hosts = ok(call("list-hosts"))
        assert sorted(h["name_label"] for h in hosts["hosts"]) == ["host1", "host2"]
        assert [m["live"] for m in hosts["host_metrics"]] == [True, True]

        doomed = pool.slaves["host1"]
        vm = ok(call("create-vm", "from-node", "--memory", str(512 * 1024**2), "--vcpus", "2"))
        assert (vm["name_label"], vm["power_state"], vm["memory"], vm["vcpus"]) == \
            ("from-node", "HALTED", str(512 * 1024**2), "2")
        started = ok(call("start-vm", vm["uuid"], "--host", doomed.uuid))
        assert (started["power_state"], started["resident_on"]) == ("RUNNING", doomed.uuid)
        by_name = ok(call("get-vm", "from-node"))
        assert by_name["uuid"] == vm["uuid"]

        doomed.kill(signal.SIGKILL)
        pool.wait_live({doomed.uuid}, live=False, timeout=10)

        result = call("shutdown-vm", vm["uuid"])
        assert result.returncode == 3, result.stderr
        assert result.stderr.strip() == f"error: HOST_OFFLINE host={doomed.uuid}"
        assert result.stdout == ""
        result = call("disable-host", "host1")
        assert result.returncode == 3
        assert result.stderr.strip() == f"error: HOST_OFFLINE host={doomed.uuid}"

        # Other reasons decode the same way, and are exit 1.
        result = call("get-vm", "00000000-0000-4000-8000-000000000000")
        assert result.returncode == 1
        assert result.stderr.strip() == ("error: HANDLE_INVALID class=vm "
                                         "uuid=00000000-0000-4000-8000-000000000000")


def test_node_client_master_unreachable_and_usage(node):
    port = free_port()
    result = run(node, f"127.0.0.1:{port}", "list-hosts")
    assert result.returncode == 4
    assert result.stderr.strip() == f"error: cannot reach the master at 127.0.0.1:{port}: " \
                                    f"connection refused"
    result = run(node, f"127.0.0.1:{port}", "frobnicate")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_node_client_finds_the_google_protos_given_explicitly(node, tmp_path):
    from google.rpc import status_pb2
    include = os.path.dirname(os.path.dirname(os.path.dirname(status_pb2.__file__)))
    port = free_port()
    env = dict(os.environ, XCP_PYTHON="/nonexistent/python")
    result = run(node, f"127.0.0.1:{port}", "--google-protos", include, "list-hosts", env=env)
    assert result.returncode == 4  # got as far as calling: the protos were found
    result = run(node, f"127.0.0.1:{port}", "--google-protos", str(tmp_path), "list-hosts",
                 env=env)
    assert result.returncode == 2 and "google/rpc/status.proto" in result.stderr


def test_node_client_identities_tokens_and_refusals(node, tmp_path):
    with RunningPool(tmp_path, slaves=1, tls=True) as pool:
        tls_dir = str(pool.tls_dir)
        host1 = pool.slaves["host1"].uuid
        # --tls-dir as a flag, or $XCP_TLS_DIR; admin by default.
        listed = ok(run(node, pool.address, "--tls-dir", tls_dir, "list-hosts"))
        assert [h["uuid"] for h in listed["hosts"]] == [host1]
        ok(run(node, pool.address, "list-hosts", env=pool.env()))
        # A relative directory is taken from the current directory.
        ok(run(node, pool.address, "--tls-dir", "tls", "list-hosts", cwd=tmp_path))

        # Plaintext to a secure master: it cannot be reached (exit 4).
        result = run(node, pool.address, "list-hosts")
        assert result.returncode == 4, result.stderr
        assert result.stderr.startswith(f"error: cannot reach the master at {pool.address}")

        # read-only: lists, may not create.
        ok(run(node, pool.address, "--identity", "viewer", "list-hosts", env=pool.env()))
        result = run(node, pool.address, "create-vm", "nope", env=pool.env(identity="viewer"))
        assert result.returncode == 1
        assert result.stderr.startswith("error: RBAC_PERMISSION_DENIED ")
        assert "role=read-only" in result.stderr and "/xcp.v1.VMService/CreateVM" in result.stderr

        # A client certificate needs a token (--auth-token or $XCP_TOKEN).
        result = run(node, pool.address, "--identity", "client", "list-hosts", env=pool.env())
        assert result.returncode == 1
        assert result.stderr.startswith("error: SESSION_AUTHENTICATION_FAILED")
        token = pool.xcp("token-issue", "--name", "node", "--role", "pool-admin").stdout.strip()
        assert token.startswith("xcp_")
        vm = ok(run(node, pool.address, "--identity", "client", "--auth-token", token,
                    "create-vm", "by-token", env=pool.env()))
        assert vm["name_label"] == "by-token"
        got = ok(run(node, pool.address, "get-vm", "by-token",
                     env=pool.env(identity="client", token=token)))
        assert got["uuid"] == vm["uuid"]

        # No such identity: a usage error, before any connection.
        result = run(node, pool.address, "--identity", "nobody", "list-hosts", env=pool.env())
        assert result.returncode == 2
        assert f"no certificate for identity 'nobody' in {tls_dir}" in result.stderr
        result = run(node, pool.address, "--tls-dir", str(tmp_path / "none"), "list-hosts")
        assert result.returncode == 2 and "no pool CA" in result.stderr


def test_node_client_with_a_token_and_the_ca_alone(node, tmp_path):
    """The master's token endpoint: TLS checked against the pool CA, no client
    certificate, the bearer token names the caller."""
    with RunningPool(tmp_path, slaves=1, tls=True,
                     master_args=["--token-listen", "127.0.0.1:0"]) as pool:
        tokens = pool.master.token_address
        ca = str(pool.tls_dir / "ca.pem")
        token = pool.xcp("token-issue", "--name", "node", "--role", "pool-admin").stdout.strip()
        vm = ok(run(node, tokens, "--ca-cert", ca, "--auth-token", token,
                    "create-vm", "by-token-alone"))
        assert vm["name_label"] == "by-token-alone"
        # $XCP_CA_CERT wins over $XCP_TLS_DIR; without a token the caller is nobody.
        env = dict(pool.env(), XCP_CA_CERT=ca)
        result = run(node, tokens, "list-hosts", env=env)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: SESSION_AUTHENTICATION_FAILED")
        listed = ok(run(node, tokens, "list-hosts", env=dict(env, XCP_TOKEN=token)))
        assert [h["uuid"] for h in listed["hosts"]] == [pool.slaves["host1"].uuid]
