"""The `xcp` CLI as a user runs it: a subprocess against a real pool (an
xcp-master and xcp-slaves as processes on loopback). Every command, its JSON
parsed, exit codes, one-line errors; HOST_OFFLINE (exit 3) after a slave is
SIGKILLed; exit 4 when the master cannot be reached; watch streams and
stops cleanly.

The pools are secure, as ./scripts/pool starts them by default (mutual TLS,
the CLI as `admin` through XCP_TLS_DIR); the roles, tokens and refusals of
the CLI are at the end. The frozen-slave test and the bare `master` fixture
are plaintext, as with --insecure."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from tests.support.clients import client_env, xcp, XCP_BIN
from tests.support.pool import RunningPool
from tests.support.processes import free_port, LineReader, popen

GiB = 1024**3


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr == ""
    return result


def failed(result: subprocess.CompletedProcess, code: int, starts: str) -> str:
    """The error line, checked: exit `code`, nothing on stdout, exactly one
    line on stderr starting with `starts`, never a traceback."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stderr}"
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(starts), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with RunningPool(tmp_path_factory.mktemp("cli-pool"), slaves=3, tls=True) as running:
        yield running


@pytest.fixture(scope="module")
def hosts(pool) -> dict[str, str]:
    """name_label -> uuid."""
    return {name: slave.uuid for name, slave in pool.slaves.items()}


def vm_json(pool, ref: str) -> dict:
    return json.loads(ok(pool.xcp("vm-get", ref, "--json")).stdout)


# -- hosts -------------------------------------------------------------------------


def test_host_list_table(pool, hosts):
    out = ok(pool.xcp("host-list")).stdout.splitlines()
    assert out[0].split()[:5] == ["UUID", "NAME", "ADDRESS", "ENABLED", "LIVE"]
    rows = {line.split()[1]: line.split() for line in out[1:]}
    assert set(rows) == {"host1", "host2", "host3"}
    for name, row in rows.items():
        assert row[0] == hosts[name]
        assert row[4] == "true"  # live
        assert row[6] == "ago" and row[5].endswith("s")  # e.g. "0.4s ago"
        assert float(row[5].rstrip("s")) < 5  # a heartbeat a second


def test_host_list_json(pool, hosts):
    doc = json.loads(ok(pool.xcp("host-list", "--json")).stdout)
    assert [h["name_label"] for h in doc["hosts"]] == ["host1", "host2", "host3"]
    assert [m["host"] for m in doc["host_metrics"]] == [h["uuid"] for h in doc["hosts"]]
    for host, metrics in zip(doc["hosts"], doc["host_metrics"]):
        assert host["enabled"] is True and host["metrics"] == metrics["uuid"]
        assert metrics["live"] is True and metrics["last_updated"].endswith("Z")
        assert int(metrics["memory_total"]) > 0


def test_host_get_and_metrics_by_name_or_uuid(pool, hosts):
    by_name = json.loads(ok(pool.xcp("host-get", "host2", "--json")).stdout)
    by_uuid = json.loads(ok(pool.xcp("--json", "host-get", hosts["host2"])).stdout)
    assert by_name == by_uuid and by_name["uuid"] == hosts["host2"]
    text = ok(pool.xcp("host-get", "host2")).stdout
    # Field names are padded to the longest one: match the shape, not the padding.
    assert re.search(rf"^uuid +: {hosts['host2']}$", text, re.M)
    assert re.search(r"^name_label +: host2$", text, re.M)
    metrics = json.loads(ok(pool.xcp("host-metrics", "host2", "--json")).stdout)
    assert metrics["host"] == hosts["host2"] and metrics["live"] is True
    text = ok(pool.xcp("host-metrics", "host2")).stdout
    assert re.search(r"^live +: true$", text, re.M) and "ago)" in text


def test_host_disable_enable(pool, hosts):
    out = ok(pool.xcp("host-disable", "host3")).stdout
    assert out.strip() == f"{hosts['host3']} (host3) disabled"
    assert json.loads(ok(pool.xcp("host-get", "host3", "--json")).stdout)["enabled"] is False
    vm = ok(pool.xcp("vm-create", "on-disabled")).stdout.strip()
    failed(pool.xcp("vm-start", vm, "--host", "host3"), 1,
           f"error: HOST_DISABLED host={hosts['host3']}")
    doc = json.loads(ok(pool.xcp("host-enable", "host3", "--json")).stdout)
    assert doc["enabled"] is True and doc["uuid"] == hosts["host3"]
    ok(pool.xcp("vm-destroy", vm))


def test_host_forget_a_live_host_is_refused(pool, hosts):
    failed(pool.xcp("host-forget", "host1"), 1, f"error: HOST_IS_LIVE host={hosts['host1']}")


# -- VMs ---------------------------------------------------------------------------


def test_vm_lifecycle(pool, hosts):
    uuid = ok(pool.xcp("vm-create", "web1", "--memory", "2G", "--vcpus", "2",
                       "--other-config", "role=web")).stdout.strip()
    vm = vm_json(pool, uuid)
    assert vm == vm_json(pool, "web1")
    assert (vm["name_label"], vm["power_state"], vm["resident_on"]) == ("web1", "HALTED", "")
    assert (vm["memory"], vm["vcpus"], vm["other_config"]) == (str(2 * GiB), "2", {"role": "web"})

    out = ok(pool.xcp("vm-start", "web1", "--host", "host2")).stdout
    assert out.strip() == f"{uuid} (web1) RUNNING on host2"
    assert vm_json(pool, uuid)["resident_on"] == hosts["host2"]

    assert ok(pool.xcp("vm-pause", uuid)).stdout.strip() == f"{uuid} (web1) PAUSED on host2"
    assert vm_json(pool, uuid)["power_state"] == "PAUSED"
    failed(pool.xcp("vm-reboot", uuid), 1,
           f"error: VM_BAD_POWER_STATE vm={uuid} expected=RUNNING actual=PAUSED")
    assert "RUNNING on host2" in ok(pool.xcp("vm-unpause", uuid)).stdout
    assert json.loads(ok(pool.xcp("vm-reboot", uuid, "--json")).stdout)["power_state"] == \
        "RUNNING"
    assert "RUNNING" in ok(pool.xcp("vm-reboot", uuid, "--force")).stdout
    failed(pool.xcp("vm-destroy", uuid), 1,
           f"error: VM_BAD_POWER_STATE vm={uuid} expected=HALTED actual=RUNNING")
    assert ok(pool.xcp("vm-shutdown", uuid)).stdout.strip() == f"{uuid} (web1) HALTED"
    failed(pool.xcp("vm-shutdown", uuid), 1, f"error: VM_BAD_POWER_STATE vm={uuid}")

    doc = json.loads(ok(pool.xcp("vm-start", uuid, "--paused", "--json")).stdout)
    assert doc["power_state"] == "PAUSED" and doc["resident_on"] in hosts.values()
    doc = json.loads(ok(pool.xcp("vm-shutdown", uuid, "--force", "--json")).stdout)
    assert (doc["power_state"], doc["resident_on"]) == ("HALTED", "")
    assert ok(pool.xcp("vm-destroy", uuid)).stdout == ""
    failed(pool.xcp("vm-get", uuid), 1, f"error: HANDLE_INVALID class=vm uuid={uuid}")


def test_vm_list_filters(pool, hosts):
    a = ok(pool.xcp("vm-create", "list-a")).stdout.strip()
    b = ok(pool.xcp("vm-create", "list-b", "--affinity", "host1")).stdout.strip()
    try:
        ok(pool.xcp("vm-start", a, "--host", "host1"))
        doc = json.loads(ok(pool.xcp("vm-list", "--json")).stdout)
        uuids = [v["uuid"] for v in doc["vms"]]
        assert a in uuids and b in uuids and uuids == sorted(uuids)
        running = json.loads(ok(pool.xcp("vm-list", "--power-state", "running",
                                          "--json")).stdout)["vms"]
        assert a in [v["uuid"] for v in running] and b not in [v["uuid"] for v in running]
        on_host1 = json.loads(ok(pool.xcp("vm-list", "--host", "host1", "--json")).stdout)
        assert [v["uuid"] for v in on_host1["vms"]] == [a]
        halted = json.loads(ok(pool.xcp("vm-list", "--host", hosts["host1"], "--power-state",
                                         "halted", "--json")).stdout)
        assert halted["vms"] == []
        table = ok(pool.xcp("vm-list")).stdout.splitlines()
        assert table[0].split()[:3] == ["UUID", "NAME", "POWER"]
        row = next(line.split() for line in table if line.startswith(a))
        assert row[1:5] == ["list-a", "RUNNING", "host1", "1G"]
    finally:
        pool.xcp("vm-shutdown", a, "--force")
        pool.xcp("vm-destroy", a)
        pool.xcp("vm-destroy", b)


def test_api_errors_are_one_line_exit_1(pool):
    failed(pool.xcp("vm-get", "00000000-0000-4000-8000-000000000000"), 1,
           "error: HANDLE_INVALID class=vm uuid=00000000-0000-4000-8000-000000000000")
    failed(pool.xcp("vm-get", "no-such-vm"), 1, "error: HANDLE_INVALID class=vm uuid=no-such-vm")
    failed(pool.xcp("vm-create", "   "), 1, "error: INVALID_VALUE field=name_label")
    failed(pool.xcp("vm-create", "huge", "--memory", "4096T"), 1,
           "error: INVALID_VALUE field=memory")
    failed(pool.xcp("watch", "--token", "garbage"), 1, "error: INVALID_VALUE field=token")


def test_usage_errors_exit_2(pool):
    result = pool.xcp("vm-start")
    assert result.returncode == 2 and "usage: xcp vm-start" in result.stderr
    assert pool.xcp("frobnicate").returncode == 2
    assert pool.xcp("vm-list", "--power-state", "asleep").returncode == 2


def test_help_documents_exit_codes():
    result = xcp("--help", master="127.0.0.1:7000")
    assert result.returncode == 0
    for line in ("0  success", "1  the master answered with an error",
                 "3  the target host is unreachable: HOST_OFFLINE or CANNOT_CONTACT_HOST",
                 "4  the master cannot be reached"):
        assert line in result.stdout


# -- watch -------------------------------------------------------------------------


def test_watch_snapshot_then_sync(pool, hosts):
    result = ok(pool.xcp("watch", "--class", "host", "--count", "4"))
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert sorted(line.split()[3] for line in lines[:3]) == sorted(hosts.values())
    assert all(line.split()[1:3] == ["ADD", "host"] for line in lines[:3])
    assert lines[3].split()[1] == "SYNC"


def test_watch_json_lines_and_resume_by_token(pool):
    result = ok(pool.xcp("watch", "--class", "vm,host_metrics", "--json", "--count", "4"))
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["op"] for e in events[:3]] == ["ADD"] * 3
    assert {e["class_name"] for e in events[:3]} == {"host_metrics"}
    token = events[-1]["token"]
    vm = ok(pool.xcp("vm-create", "watched")).stdout.strip()
    try:
        result = ok(pool.xcp("watch", "--token", token, "--class", "vm", "--json",
                             "--count", "1"))
        event = json.loads(result.stdout)
        assert (event["op"], event["class_name"], event["uuid"]) == ("ADD", "vm", vm)
        assert event["vm"]["name_label"] == "watched"
    finally:
        pool.xcp("vm-destroy", vm)


def test_watch_timeout_ends_cleanly(pool):
    started = time.monotonic()
    result = ok(pool.xcp("watch", "--class", "host", "--timeout", "1"))
    assert 0.9 < time.monotonic() - started < 10
    assert result.stdout.splitlines()[-1].split()[1] == "SYNC"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_stops_cleanly_on_a_signal(pool, sig):
    env = pool.env()
    with popen([str(XCP_BIN), "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               text=True, env=env) as proc:
        first = LineReader(proc.stdout).next(timeout=10)
        assert " ADD " in first
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == ""


def test_watch_into_a_closed_pipe_stops_quietly(pool):
    """`xcp watch | head -n 2` ends quietly at its first write after head left.
    As with any Unix filter, that write has to happen: when the whole snapshot
    fits in the pipe before head exits, only a later event shows the pipe is
    closed, so changes are made until the pipeline ends (bounded)."""
    env = pool.env()
    watch = subprocess.Popen(["bash", "-c", f"set -o pipefail; '{XCP_BIN}' watch --json | head -n 2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for n in range(60):  # at most ~30 s
            if watch.poll() is not None:
                break
            ok(pool.xcp("vm-create", f"pipe-{n}", "--memory", "1M"))  # the pool's own client:
            time.sleep(0.5)  # a plain xcp() would miss this TLS pool and change nothing
        stdout, stderr = watch.communicate(timeout=10)
    finally:
        watch.kill()
        watch.wait()
    assert watch.returncode == 0, stderr
    assert len(stdout.splitlines()) == 2
    assert stderr == ""


# -- the master unreachable ----------------------------------------------------------


def test_no_master_is_exit_4():
    port = free_port()
    line = failed(xcp("host-list", master=f"127.0.0.1:{port}"), 4,
                  f"error: cannot reach the master at 127.0.0.1:{port}")
    assert line.endswith("connection refused")
    failed(xcp("--master", f"127.0.0.1:{port}", "watch"), 4, "error: cannot reach the master")
    failed(xcp("vm-start", "00000000-0000-4000-8000-000000000000", master=f"127.0.0.1:{port}"),
           4, "error: cannot reach the master")


def test_hung_master_is_exit_4_within_the_timeout(master):
    master.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        line = failed(xcp("host-list", "--timeout", "1", master=master.address), 4,
                      f"error: cannot reach the master at {master.address}")
        assert time.monotonic() - started < 5
        assert "1s" in line
    finally:
        master.kill(signal.SIGCONT)


# -- a host dies ---------------------------------------------------------------------


def test_killed_slave_gives_host_offline_exit_3(tmp_path):
    with RunningPool(tmp_path, slaves=2, tls=True) as pool:
        doomed = pool.slaves["host1"]
        vm = ok(pool.xcp("vm-create", "victim")).stdout.strip()
        ok(pool.xcp("vm-start", vm, "--host", "host1"))
        env = pool.env()
        with popen([str(XCP_BIN), "watch", "--class", "host_metrics", "--json"],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   env=env) as watcher:
            lines = LineReader(watcher.stdout)
            while json.loads(lines.next(timeout=10))["op"] != "SYNC":
                pass
            killed_at = time.monotonic()
            doomed.kill(signal.SIGKILL)
            # The watcher sees the host go down within a second or two.
            while True:
                line = lines.next(timeout=max(0.0, killed_at + 5 - time.monotonic()))
                assert line is not None, "the watch ended"
                event = json.loads(line)
                if event.get("host_metrics", {}).get("host") == doomed.uuid and \
                        not event["host_metrics"]["live"]:
                    break
            assert time.monotonic() - killed_at < 5
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(timeout=10) == 0

        rows = {line.split()[1]: line.split() for line in
                ok(pool.xcp("host-list")).stdout.splitlines()[1:]}
        assert rows["host1"][4] == "false" and rows["host2"][4] == "true"

        started = time.monotonic()
        failed(pool.xcp("vm-shutdown", vm), 3, f"error: HOST_OFFLINE host={doomed.uuid}")
        failed(pool.xcp("vm-reboot", vm, "--force"), 3, f"error: HOST_OFFLINE host={doomed.uuid}")
        failed(pool.xcp("host-disable", "host1"), 3, f"error: HOST_OFFLINE host={doomed.uuid}")
        failed(pool.xcp("vm-start", "victim", "--host", "host1"), 1,
               f"error: VM_BAD_POWER_STATE vm={vm}")
        assert time.monotonic() - started < 15  # four CLI runs: each fails at once

        # xapi's way out: declare the host dead (its VMs halt), start elsewhere, forget it.
        out = ok(pool.xcp("host-declare-dead", "host1")).stdout
        assert out.startswith(f"{doomed.uuid} (host1) declared dead")
        assert vm_json(pool, vm)["power_state"] == "HALTED"
        assert ok(pool.xcp("vm-start", "victim")).stdout.strip() == \
            f"{vm} (victim) RUNNING on host2"
        assert ok(pool.xcp("host-forget", "host1")).stdout == ""
        names = [h["name_label"] for h in
                 json.loads(ok(pool.xcp("host-list", "--json")).stdout)["hosts"]]
        assert names == ["host2"]
        failed(pool.xcp("host-get", doomed.uuid), 1, "error: HANDLE_INVALID class=host")


def test_cannot_contact_a_frozen_slave_is_exit_3(tmp_path):
    """A SIGSTOPped slave: live until dead_after, but forwarded calls fail
    with CANNOT_CONTACT_HOST within the contact budget, then HOST_OFFLINE."""
    with RunningPool(tmp_path, slaves=1) as pool:
        frozen = pool.slaves["host1"]
        vm = ok(pool.xcp("vm-create", "stuck")).stdout.strip()
        ok(pool.xcp("vm-start", vm))
        frozen.kill(signal.SIGSTOP)
        try:
            started = time.monotonic()
            result = pool.xcp("vm-shutdown", vm)
            assert time.monotonic() - started < 10
            assert result.returncode == 3, result.stderr
            assert result.stderr.strip() in (f"error: CANNOT_CONTACT_HOST host={frozen.uuid}",
                                             f"error: HOST_OFFLINE host={frozen.uuid}")
            pool.wait_live({frozen.uuid}, live=False, timeout=10)
            failed(pool.xcp("vm-pause", vm), 3, f"error: HOST_OFFLINE host={frozen.uuid}")
        finally:
            frozen.kill(signal.SIGCONT)


def test_watch_exits_4_when_the_master_goes_away(master):
    env = client_env(master.address)
    with popen([str(XCP_BIN), "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               text=True, env=env) as proc:
        lines = LineReader(proc.stdout)
        while " SYNC " not in (lines.next(timeout=10) or " SYNC "):
            pass
        master.kill(signal.SIGKILL)
        assert proc.wait(timeout=10) == 4
        err = proc.stderr.read()
        assert err.startswith(f"error: lost the connection to the master at {master.address}")
        assert len(err.splitlines()) == 1 and "Traceback" not in err


# -- security: identities, roles, tokens ----------------------------------------------------


def test_read_only_identity_reads_but_may_not_change(pool, hosts):
    doc = json.loads(ok(pool.xcp("host-list", "--json", identity="viewer")).stdout)
    assert {h["name_label"] for h in doc["hosts"]} == set(hosts)
    ok(pool.xcp("vm-list", identity="viewer"))
    ok(pool.xcp("host-metrics", "host1", identity="viewer"))
    ok(pool.xcp("watch", "--class", "host", "--count", "1", identity="viewer"))
    failed(pool.xcp("vm-create", "nope", identity="viewer"), 1,
           "error: RBAC_PERMISSION_DENIED role=read-only operation=/xcp.v1.VMService/CreateVM")
    failed(pool.xcp("host-disable", "host1", identity="viewer"), 1,
           "error: RBAC_PERMISSION_DENIED role=read-only "
           "operation=/xcp.v1.HostService/DisableHost")


def test_client_certificate_needs_a_token(pool):
    failed(pool.xcp("host-list", identity="client"), 1,
           "error: SESSION_AUTHENTICATION_FAILED")
    issued = ok(xcp("token-issue", "--name", "ci", "--role", "read-only", "--ttl", "600",
                    env=pool.env()))
    token = issued.stdout.strip()
    ok(pool.xcp("vm-list", identity="client", token=token))
    ok(pool.xcp("--auth-token", token, "vm-list", identity="client"))  # flag, not env
    failed(pool.xcp("vm-create", "nope", identity="client", token=token), 1,
           "error: RBAC_PERMISSION_DENIED role=read-only")
    admin = ok(xcp("token-issue", "--name", "ops", "--role", "pool-admin",
                   env=pool.env())).stdout.strip()
    vm = ok(pool.xcp("vm-create", "by-token", identity="client", token=admin)).stdout.strip()
    ok(pool.xcp("vm-destroy", vm, identity="client", token=admin))
    failed(pool.xcp("vm-list", identity="client", token="xcp_not-a-real-token"), 1,
           "error: SESSION_AUTHENTICATION_FAILED detail='unknown bearer token'")


def test_expired_token_is_refused(pool):
    token = ok(xcp("token-issue", "--name", "brief", "--role", "pool-admin", "--ttl", "0.5",
                   env=pool.env())).stdout.strip()
    time.sleep(1.0)  # real processes, a real clock: the token's expiry is wall time
    failed(pool.xcp("host-list", identity="client", token=token), 1,
           "error: SESSION_AUTHENTICATION_FAILED detail='bearer token of brief expired'")


def test_plaintext_and_unknown_identities_are_refused(pool):
    line = failed(xcp("host-list", master=pool.address), 4,
                  f"error: cannot reach the master at {pool.address}")
    assert "Traceback" not in line
    failed(pool.xcp("host-list", identity="nobody"), 2,
           f"error: no certificate for identity 'nobody' in {pool.tls_dir}")
