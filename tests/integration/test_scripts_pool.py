"""./scripts/pool: starts a master and slaves, prints how to use them, stops
everything on SIGTERM or Ctrl-C with no process left behind, refuses a second
instance on the same state dir or port, and restarts on its old state.

Secure by default: the first run creates the pool's certificates under
<state>/tls, the pool speaks only mutual TLS (plaintext clients are refused),
and the commands it prints carry the right flags; --insecure serves plaintext."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.support.clients import client_env, run_grpcurl, xcp
from tests.support.pool_script import POOL_SCRIPT, PoolScript
from tests.support.processes import free_port, REPO, session_pids, wait_until


def hosts_live(pool: PoolScript) -> dict[str, bool]:
    result = pool.xcp("host-list", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    names = {h["uuid"]: h["name_label"] for h in doc["hosts"]}
    return {names[m["host"]]: m["live"] for m in doc["host_metrics"]}


def no_process_left(pool: PoolScript) -> None:
    wait_until(lambda: not session_pids(pool.sid), timeout=10,
               what=f"no process left in the session of scripts/pool: {session_pids(pool.sid)}")


def check_metrics(pool, state) -> None:
    """Metrics are on: the banner's URLs answer, and prometheus-targets.json
    (a Prometheus file_sd file) names the same endpoints."""
    urls = re.findall(r"^\s+(master|host\d+)\s+(http://127\.0\.0\.1:\d+/metrics)$",
                      pool.text(), re.M)
    assert [name for name, _ in urls] == ["master", "host1", "host2"], pool.text()
    for name, url in urls:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        assert ("xcp_hosts{" if name == "master" else "xcp_slave_domains{") in text
    targets = json.loads((state / "prometheus-targets.json").read_text())
    listed = [t for group in targets for t in group["targets"]]
    assert listed == [url.removeprefix("http://").removesuffix("/metrics") for _, url in urls]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_starts_prints_and_stops_everything(tmp_path, how):
    state = tmp_path / "state"
    with PoolScript(state, port=0, slaves=2) as pool:
        banner = pool.text()
        assert set(pool.hosts) == {"host1", "host2"}
        assert f"export XCP_TLS_DIR={state}/tls " in banner
        assert "xcp host-list" in banner and f"export XCP_MASTER={pool.address}" in banner
        assert f"kill -9 $(cat {state}/run/host1.pid)" in banner
        assert hosts_live(pool) == {"host1": True, "host2": True}
        # The processes it reports are the ones running, and their pid files agree.
        pids = {int(h["pid"]) for h in pool.hosts.values()} | {pool.master_pid}
        assert pids <= set(session_pids(pool.sid))
        assert int((state / "run" / "master.pid").read_text()) == pool.master_pid
        for name, host in pool.hosts.items():
            assert (state / "run" / f"{name}.pid").read_text().strip() == host["pid"]
            assert (state / "slaves" / name).is_dir()
        assert (state / "pool.db").exists() and (state / "logs" / "master.log").exists()
        check_metrics(pool, state)

        if how == "SIGTERM":
            code = pool.stop(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to the whole foreground process group
            code = pool.stop(signal.SIGINT, group=True)
        assert code == 0, pool.text()
        no_process_left(pool)
        assert "pool stopped" in pool.text()
        assert not list((state / "run").glob("*.pid"))
        if how == "SIGTERM":  # stopped by the script: slaves first, and they said goodbye
            for name in pool.hosts:
                assert "said goodbye" in (state / "logs" / f"{name}.log").read_text()


def test_second_instance_is_refused_and_the_first_keeps_running(tmp_path):
    state = tmp_path / "state"
    with PoolScript(state, port=0, slaves=1) as first:
        second = subprocess.run([str(POOL_SCRIPT), "--port", "0", "--slaves", "1",
                                 "--state-dir", str(state)], cwd=REPO, capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert second.returncode == 1
        assert "a pool is already running on" in second.stderr
        assert f"scripts/pool pid {first.proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        # The first pool is untouched.
        assert first.proc.poll() is None
        assert hosts_live(first) == {"host1": True}
        assert int((state / "pool.pid").read_text()) == first.proc.pid
        assert first.stop() == 0
        no_process_left(first)


def test_port_in_use_is_refused(tmp_path):
    port = free_port()
    with PoolScript(tmp_path / "a", port=port, slaves=1) as first:
        assert first.address == f"127.0.0.1:{port}"
        second = PoolScript(tmp_path / "b", port=port, slaves=1)
        with pytest.raises(AssertionError, match="ended before it was up"):
            second.start(timeout=120)
        try:
            code = second.proc.wait(timeout=30)
            assert code == 1
            assert f"port {port} on 127.0.0.1 is in use" in second.text()
            no_process_left(second)
        finally:
            second.kill_all()
        assert hosts_live(first) == {"host1": True}


def test_restart_keeps_state(tmp_path):
    """Stop and start again on the same state dir: the same hosts (uuids kept
    in slaves/<name>), the same VMs (pool.db), the same certificates (tls/),
    the port free again."""
    state = tmp_path / "state"
    port = free_port()
    with PoolScript(state, port=port, slaves=2) as first:
        assert "created the pool CA" in first.text()
        uuids = {name: h["uuid"] for name, h in first.hosts.items()}
        certificates = {p.name: p.read_bytes() for p in (state / "tls").glob("*.pem")}
        created = first.xcp("vm-create", "survivor")
        assert created.returncode == 0, created.stderr
        vm = created.stdout.strip()
        assert first.stop() == 0
    with PoolScript(state, port=port, slaves=2) as again:
        assert "created the pool CA" not in again.text()
        assert {p.name: p.read_bytes() for p in (state / "tls").glob("*.pem")} == certificates
        assert {name: h["uuid"] for name, h in again.hosts.items()} == uuids
        got = again.xcp("vm-get", vm, "--json")
        assert got.returncode == 0 and json.loads(got.stdout)["name_label"] == "survivor"
        wait_until(lambda: hosts_live(again) == {"host1": True, "host2": True},
                   timeout=15, what="both hosts live again")
        assert again.stop() == 0
        no_process_left(again)


def test_a_dead_slave_is_reported_and_the_pool_keeps_running(tmp_path):
    with PoolScript(tmp_path / "state", port=0, slaves=2) as pool:
        victim = int(pool.hosts["host1"]["pid"])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "host1 (pid" not in pool.text():
            assert pool.readline(max(0.0, deadline - time.monotonic())) is not None
        assert "exited: its host goes not live" in pool.text()
        wait_until(lambda: hosts_live(pool) == {"host1": False, "host2": True},
                   timeout=10, what="host1 not live")
        assert pool.proc.poll() is None
        assert pool.stop() == 0
        no_process_left(pool)


def test_bad_options_are_usage_errors():
    for argv in (["--port", "http"], ["--slaves", "-1"], ["--frobnicate"]):
        result = subprocess.run([str(POOL_SCRIPT), *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == 2, (argv, result.stderr)
        assert "scripts/pool:" in result.stderr
    result = subprocess.run([str(POOL_SCRIPT), "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "--slaves N" in result.stdout


# -- secure by default, --insecure for experiments ----------------------------------------


def banner_commands(banner: str) -> list[str]:
    """The commands the banner shows (indented, after "In another terminal"),
    except those that run until stopped or kill a host."""
    lines = banner.split("In another terminal", 1)[1].splitlines()[1:]
    commands = [line.strip() for line in lines if line.startswith("  ")]
    return [c for c in commands if not c.startswith(("xcp watch", "kill -9"))]


def run_shell(commands: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `commands` as a user would paste them, from the repository root,
    in a shell with none of the XCP_* settings."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(commands)], cwd=REPO,
                          env=client_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def grpcurl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return run_grpcurl("-connect-timeout", "3", *args, timeout=timeout)


def test_secure_by_default(tmp_path):
    """The first run creates <state>/tls (the pool CA, the master's, the
    clients' and one certificate per slave), the pool refuses plaintext, and
    the commands the banner prints work as printed."""
    state = tmp_path / "state"
    with PoolScript(state, port=0, slaves=2) as pool:
        tls = state / "tls"
        banner = pool.text()
        assert f"created the pool CA and certificates in {tls}" in banner
        for name in ("ca", "master", "client-admin", "client-viewer", "client-client"):
            assert (tls / f"{name}.pem").exists() and (tls / f"{name}-key.pem").exists()
        assert tls.stat().st_mode & 0o077 == 0
        assert (tls / "ca-key.pem").stat().st_mode & 0o077 == 0
        for name, host in pool.hosts.items():  # uuid given before the first start
            assert (state / "slaves" / name / "host-uuid").read_text().strip() == host["uuid"]
            assert (tls / f"host-{host['uuid']}.pem").exists()

        flags = (f"-cacert {tls}/ca.pem -cert {tls}/client-admin.pem "
                 f"-key {tls}/client-admin-key.pem")
        assert f"grpcurl {flags} {pool.address} list" in banner
        assert f"grpcurl {flags} -d '{{}}' {pool.address} xcp.v1.HostService/ListHosts" in banner
        assert "xcp token-issue --name alice --role read-only" in banner
        assert pool.token_address and pool.token_address != pool.address
        assert f"xcp --master {pool.token_address} --ca-cert {tls}/ca.pem" in banner
        assert "./scripts/pool --insecure" in banner
        assert "-plaintext" not in banner

        # Plaintext is refused: xcp (the master unreachable, exit 4) and grpcurl.
        plain = xcp("host-list", master=pool.address, timeout=30)
        assert plain.returncode == 4, plain.stderr
        assert plain.stderr.startswith(f"error: cannot reach the master at {pool.address}")
        assert grpcurl("-plaintext", pool.address, "list").returncode != 0
        # ... and so is TLS without a client certificate of the pool.
        assert grpcurl("-cacert", str(tls / "ca.pem"), pool.address, "list").returncode != 0
        secure = grpcurl(*flags.split(), pool.address, "list")
        assert secure.returncode == 0 and "xcp.v1.HostService" in secure.stdout, secure.stderr

        # The banner's commands, pasted into a shell from the repository root.
        commands = banner_commands(banner)
        assert commands[0] == "export PATH=$PWD/.venv/bin:$PATH     # xcp, grpcurl"
        result = run_shell(commands)
        assert result.returncode == 0, f"{commands}\n{result.stdout}\n{result.stderr}"
        assert re.search(r"^[0-9a-f-]{36}  host1  127\.0\.0\.1:\d+\s+true\s+true", result.stdout,
                         re.M), result.stdout
        assert "xcp.v1.VMService" in result.stdout and '"name_label": "host2"' in result.stdout
        assert re.search(r"\(web1\) RUNNING on host[12]$", result.stdout, re.M), result.stdout
        # The read-only token lists (web1 in its vm-list) but may not change anything.
        assert re.search(r"\sweb1\s+RUNNING\s", result.stdout), result.stdout
        # ... also with nothing but the token and the CA, on the token endpoint.
        assert len(re.findall(r"\sweb1\s+RUNNING\s", result.stdout)) == 2, result.stdout
        assert '"name_label": "web1"' in result.stdout, result.stdout
        # Health checks need no credentials there; every other call needs a token.
        health = grpcurl("-cacert", str(tls / "ca.pem"), pool.token_address,
                         "grpc.health.v1.Health/Check")
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
        anonymous = grpcurl("-cacert", str(tls / "ca.pem"), pool.token_address,
                            "xcp.v1.HostService/ListHosts")
        assert anonymous.returncode == 64 + 16, anonymous.stderr  # UNAUTHENTICATED
        token = next(c for c in commands if c.startswith("TOKEN="))
        denied = run_shell([c for c in commands if c.startswith("export ")] + [
            token, 'xcp --identity client --auth-token "$TOKEN" vm-shutdown web1'])
        assert denied.returncode == 1
        assert denied.stderr.startswith("error: RBAC_PERMISSION_DENIED role=read-only"), \
            denied.stderr
        assert pool.stop() == 0
        no_process_left(pool)


def test_insecure_serves_plaintext_and_a_later_secure_run_keeps_the_hosts(tmp_path):
    state = tmp_path / "state"
    with PoolScript(state, port=0, slaves=1, extra=["--insecure"]) as pool:
        banner = pool.text()
        assert "INSECURE: plaintext" in banner
        assert f"grpcurl -plaintext {pool.address} list" in banner
        assert "unset XCP_TLS_DIR" in banner and "-cacert" not in banner
        assert not (state / "tls").exists()
        assert hosts_live(pool) == {"host1": True}
        listed = grpcurl("-plaintext", pool.address, "list")
        assert listed.returncode == 0 and "xcp.v1.VMService" in listed.stdout, listed.stderr
        result = run_shell(banner_commands(banner))
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert "(web1) RUNNING on host1" in result.stdout
        uuid = pool.hosts["host1"]["uuid"]
        assert pool.stop() == 0
        no_process_left(pool)
    # The same state dir, secure: the host keeps its uuid and gets a certificate.
    with PoolScript(state, port=0, slaves=1) as secure:
        assert secure.hosts["host1"]["uuid"] == uuid
        assert (state / "tls" / f"host-{uuid}.pem").exists()
        assert hosts_live(secure) == {"host1": True}
        assert xcp("host-list", master=secure.address, timeout=30).returncode == 4
        assert secure.stop() == 0
        no_process_left(secure)
