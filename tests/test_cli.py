"""Unit tests of the `xcp` CLI: formatting, error -> exit code mapping,
argument parsing and command wiring, and the certificate commands (pool-init,
cert-issue, token-issue) on a temporary directory. No network: commands run
against a fake connection that records the requests it is given."""

from __future__ import annotations

import io
import json
import os
import stat
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import vm_service_pb2 as vs
from cryptography import x509

from xcp_control.security import auth, pki
from xcp_control.cli import app, client, render
from xcp_control.cli.client import CliError, classify
from xcp_control.errors import XcpError
from xcp_control.settings import parse_size

H1 = "11111111-1111-4111-8111-111111111111"
H2 = "22222222-2222-4222-8222-222222222222"
M1 = "aaaaaaaa-1111-4111-8111-111111111111"
M2 = "aaaaaaaa-2222-4222-8222-222222222222"
VM1 = "bbbbbbbb-0000-4000-8000-000000000001"
GiB = 1024**3
NOW = 1_800_000_000.0


def ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def listing() -> hs.ListHostsResponse:
    return hs.ListHostsResponse(
        hosts=[dm.Host(uuid=H1, name_label="host1", address="127.0.0.1:4001", enabled=True,
                       metrics=M1),
               dm.Host(uuid=H2, name_label="host2", address="127.0.0.1:4002", enabled=False,
                       metrics=M2)],
        host_metrics=[dm.HostMetrics(uuid=M1, host=H1, live=True, last_updated=ts(NOW - 0.4),
                                     memory_total=64 * GiB, memory_free=62 * GiB),
                      dm.HostMetrics(uuid=M2, host=H2, live=False,
                                     last_updated=ts(NOW - 305), memory_total=64 * GiB,
                                     memory_free=64 * GiB)])


def vm(state=dm.RUNNING, host=H1) -> dm.VM:
    return dm.VM(uuid=VM1, name_label="web1", power_state=state, resident_on=host,
                 memory=2 * GiB, vcpus=2)


# -- sizes and times ----------------------------------------------------------------


@pytest.mark.parametrize("n, text", [(0, "0B"), (512, "512B"), (1024, "1K"),
                                     (GiB, "1G"), (GiB * 3 // 2, "1.5G"),
                                     (64 * GiB, "64G"), (2 * 1024**4, "2T")])
def test_human_bytes(n, text):
    assert render.human_bytes(n) == text


@pytest.mark.parametrize("text, n", [("1073741824", GiB), ("1G", GiB), ("1GiB", GiB),
                                     ("512M", 512 * 1024**2), ("1.5g", GiB * 3 // 2),
                                     ("2k", 2048)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "G", "1X", "-1G", "one"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("seconds, text", [(0, "0.0s"), (0.44, "0.4s"), (-3, "0.0s"),
                                           (12.7, "12s"), (119, "119s"), (303, "5m03s"),
                                           (7500, "2h05m"), (3 * 86400 + 4 * 3600, "3d04h")])
def test_age(seconds, text):
    assert render.age(seconds) == text


def test_last_beat_never_for_an_unset_timestamp():
    assert render.last_beat(dm.HostMetrics(), NOW) == "never"
    assert render.last_beat(dm.HostMetrics(last_updated=ts(NOW - 2)), NOW) == "2.0s ago"


# -- tables and records ------------------------------------------------------------------


def test_host_table_shows_live_state_and_heartbeat_age():
    header, rows = render.host_table(listing(), now=NOW)
    assert header == render.HOST_COLUMNS
    assert rows[0] == [H1, "host1", "127.0.0.1:4001", "true", "true", "0.4s ago", "62G", "64G"]
    assert rows[1] == [H2, "host2", "127.0.0.1:4002", "false", "false", "5m05s ago", "64G",
                       "64G"]


def test_host_table_matches_metrics_by_host_not_position():
    response = listing()
    response.host_metrics.reverse()
    _, rows = render.host_table(response, now=NOW)
    assert rows[0][4] == "true" and rows[1][4] == "false"
    del response.host_metrics[:]
    _, rows = render.host_table(response, now=NOW)
    assert [r[5] for r in rows] == ["never", "never"]


def test_vm_table_names_the_host():
    _, rows = render.vm_table([vm(), vm(dm.HALTED, "")], {H1: "host1"})
    assert rows[0] == [VM1, "web1", "RUNNING", "host1", "2G", "2"]
    assert rows[1][2:4] == ["HALTED", "-"]
    _, rows = render.vm_table([vm()], {})
    assert rows[0][3] == H1


def test_plain_table_aligns_columns_without_trailing_space():
    text = render.plain_table(["A", "LONGER", "C"], [["xx", "y", "z"], ["x", "", "last"]])
    assert text.splitlines() == ["A   LONGER  C", "xx  y       z", "x           last"]


def test_record_in_proto_order_with_readable_values():
    pairs = dict(render.record(listing().host_metrics[0], now=NOW))
    assert list(pairs) == ["uuid", "host", "live", "last_updated", "memory_total",
                           "memory_free"]
    assert pairs["live"] == "true"
    assert pairs["memory_total"] == f"{64 * GiB} (64G)"
    assert pairs["last_updated"].endswith("(0.4s ago)")
    v = vm()
    v.other_config.update({"b": "2", "a": "1"})
    pairs = dict(render.record(v, now=NOW))
    assert pairs["power_state"] == "RUNNING" and pairs["other_config"] == "a=1, b=2"
    text = render.plain_record(render.record(v, now=NOW))
    assert text.splitlines()[0] == f"uuid         : {VM1}"


def test_output_table_plain_when_piped_rich_on_a_terminal():
    piped = io.StringIO()
    render.Output(json_mode=False, stream=piped, terminal=False).table(
        render.host_table(listing(), now=NOW))
    assert piped.getvalue().splitlines()[0].split() == ["UUID", "NAME", "ADDRESS", "ENABLED",
                                                       "LIVE", "LAST", "BEAT", "MEM", "FREE",
                                                       "MEM", "TOTAL"]
    assert "\x1b[" not in piped.getvalue()
    tty = io.StringIO()
    render.Output(json_mode=False, stream=tty, terminal=True).table(
        render.host_table(listing(), now=NOW))
    assert "LAST BEAT" in tty.getvalue() and H1 in tty.getvalue()


# -- JSON ----------------------------------------------------------------------------------


def test_json_uses_proto_field_names_and_keeps_defaults():
    doc = json.loads(render.to_json(vs.ListVMsResponse(vms=[vm(dm.HALTED, "")])))
    first = doc["vms"][0]
    assert first["name_label"] == "web1" and first["power_state"] == "HALTED"
    assert first["resident_on"] == "" and first["memory"] == str(2 * GiB)
    doc = json.loads(render.to_json(listing()))
    assert doc["host_metrics"][1]["live"] is False
    assert doc["hosts"][1]["enabled"] is False


def test_json_one_line_for_streams():
    event = ev.Event(token="db.7", op=ev.MOD, class_name="vm", uuid=VM1, vm=vm())
    line = render.to_json(event, indent=None)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["op"] == "MOD" and doc["class_name"] == "vm" and doc["vm"]["uuid"] == VM1


# -- events ----------------------------------------------------------------------------------


def test_event_line_host_metrics_names_the_host():
    m = listing().host_metrics[1]
    event = ev.Event(token="db.9", op=ev.MOD, class_name="host_metrics", uuid=m.uuid,
                     host_metrics=m)
    line = render.event_line(event, {H2: "host2"}, received=NOW)
    _, rest = line.split(" ", 1)
    assert rest == f"MOD  host_metrics {M2} host=host2 live=false memory_free=64G token=db.9"


def test_event_line_vm_and_host_and_sync():
    line = render.event_line(ev.Event(token="db.3", op=ev.ADD, class_name="vm", uuid=VM1,
                                      vm=vm()), {H1: "host1"}, received=NOW)
    assert "ADD  vm           " in line
    assert line.endswith("name_label=web1 power_state=RUNNING resident_on=host1 token=db.3")
    h = listing().hosts[0]
    line = render.event_line(ev.Event(token="db.4", op=ev.DEL, class_name="host", uuid=H1,
                                      host=h), received=NOW)
    assert "DEL  host" in line and "name_label=host1 address=127.0.0.1:4001 enabled=true" in line
    line = render.event_line(ev.Event(token="db.5", op=ev.SYNC), received=NOW)
    assert "SYNC" in line and line.endswith("token=db.5")


def test_event_line_quotes_odd_values():
    v = vm()
    v.name_label = "my vm"
    line = render.event_line(ev.Event(op=ev.MOD, class_name="vm", uuid=VM1, vm=v, token="t"))
    assert "name_label='my vm'" in line


# -- errors and exit codes ---------------------------------------------------------------------


class FakeRpcError(grpc.RpcError, grpc.Call):
    """What a failed call raises, built from a status (no network)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing=()) -> None:
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    @classmethod
    def of(cls, err: XcpError) -> "FakeRpcError":
        status = err.to_status()
        return cls(status.code, status.details, status.trailing_metadata)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


@pytest.mark.parametrize("err, code, line", [
    (XcpError("HOST_OFFLINE", host=H1), 3, f"error: HOST_OFFLINE host={H1}"),
    (XcpError("CANNOT_CONTACT_HOST", host=H2), 3, f"error: CANNOT_CONTACT_HOST host={H2}"),
    (XcpError("VM_BAD_POWER_STATE", vm=VM1, expected="HALTED", actual="RUNNING"), 1,
     f"error: VM_BAD_POWER_STATE vm={VM1} expected=HALTED actual=RUNNING"),
    (XcpError("HANDLE_INVALID", uuid=VM1, **{"class": "vm"}), 1,
     f"error: HANDLE_INVALID class=vm uuid={VM1}"),
    (XcpError("OPERATION_TIMED_OUT", host=H1, operation="start"), 1,
     f"error: OPERATION_TIMED_OUT host={H1} operation=start"),
])
def test_catalogued_errors(err, code, line):
    out = classify(FakeRpcError.of(err), "127.0.0.1:7000", connected=True, timeout=30)
    assert (out.code, out.message) == (code, line)


def test_error_line_orders_catalogue_params_first_then_others():
    line = render.error_line("VM_BAD_POWER_STATE",
                             {"zz": "1", "actual": "RUNNING", "vm": VM1, "expected": "HALTED"})
    assert line == f"error: VM_BAD_POWER_STATE vm={VM1} expected=HALTED actual=RUNNING zz=1"
    assert render.error_line("SOMETHING_NEW", {}) == "error: SOMETHING_NEW"
    assert render.error_line("INVALID_VALUE", {"field": "name", "value": ""}) == \
        "error: INVALID_VALUE field=name value=''"


def test_master_unreachable_is_exit_4():
    refused = FakeRpcError(grpc.StatusCode.UNAVAILABLE,
                           "failed to connect to all addresses; last error: UNKNOWN: "
                           "ipv4:127.0.0.1:7000: Failed to connect to remote host: "
                           "Connection refused")
    out = classify(refused, "127.0.0.1:7000", connected=False, timeout=30)
    assert out.code == client.MASTER_UNREACHABLE == 4
    assert out.message == "error: cannot reach the master at 127.0.0.1:7000: connection refused"
    lost = classify(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"),
                    "127.0.0.1:7000", connected=True, timeout=30)
    assert lost.code == 4 and "lost the connection" in lost.message
    silent = classify(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
                      "127.0.0.1:7000", connected=False, timeout=2)
    assert silent.code == 4 and "no connection within 2s" in silent.message


def test_slow_master_and_other_codes_are_exit_1():
    slow = classify(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
                    "m:1", connected=True, timeout=30)
    assert slow.code == 1 and "DEADLINE_EXCEEDED" in slow.message and "30s" in slow.message
    other = classify(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!"),
                     "m:1", connected=True, timeout=30)
    assert (other.code, other.message) == (1, "error: UNIMPLEMENTED: Method not found!")


def test_exit_codes_are_distinct_and_documented_in_help(capsys):
    codes = [c for c, _ in client.EXIT_CODES]
    assert codes == [0, 1, 2, 3, 4, 130] and len(set(codes)) == len(codes)
    assert app.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for code, meaning in client.EXIT_CODES:
        assert f"{code:>3}  {meaning}" in text
    assert "XCP_MASTER" in text


# -- arguments ------------------------------------------------------------------------------


def parse(*argv, env=None):
    return app.parse_args(list(argv), environ=env or {})


def test_master_from_flag_env_or_default():
    assert parse("host-list").master == "127.0.0.1:7000"
    assert parse("host-list", env={"XCP_MASTER": "127.0.0.1:7100"}).master == "127.0.0.1:7100"
    assert parse("--master", "127.0.0.1:1", "host-list",
                 env={"XCP_MASTER": "127.0.0.1:7100"}).master == "127.0.0.1:1"
    assert parse("host-list", "--master", "127.0.0.1:2").master == "127.0.0.1:2"


def test_common_options_before_or_after_the_command():
    before = parse("--json", "--timeout", "5", "vm-list")
    after = parse("vm-list", "--json", "--timeout", "5")
    assert before.json and after.json and before.timeout == after.timeout == 5.0
    assert not parse("vm-list").json


def test_default_timeouts():
    assert parse("host-list").timeout == app.READ_TIMEOUT == 30
    assert parse("vm-start", VM1).timeout == app.LIFECYCLE_TIMEOUT
    assert parse("vm-shutdown", VM1, "--force").timeout == app.LIFECYCLE_TIMEOUT
    assert parse("host-disable", H1).timeout == app.LIFECYCLE_TIMEOUT
    assert parse("vm-start", VM1, "--timeout", "3").timeout == 3.0
    watch = parse("watch")
    assert watch.timeout is None and watch.call_timeout == app.READ_TIMEOUT
    assert parse("watch", "--timeout", "4").timeout == 4.0


def test_command_arguments():
    a = parse("vm-create", "web1", "--memory", "512M", "--vcpus", "2", "--affinity", "host1",
              "--other-config", "k=v", "--other-config", "x=")
    assert (a.name_label, a.memory, a.vcpus, a.affinity) == ("web1", 512 * 1024**2, 2, "host1")
    assert a.other_config == [("k", "v"), ("x", "")]
    assert parse("vm-create", "w").memory == GiB and parse("vm-create", "w").vcpus == 1
    a = parse("vm-list", "--host", "host1", "--power-state", "running")
    assert (a.host, a.power_state) == ("host1", dm.RUNNING)
    a = parse("vm-start", VM1, "--host", H1, "--paused")
    assert (a.vm, a.host, a.paused) == (VM1, H1, True)
    assert parse("vm-shutdown", VM1, "--force").force
    assert not parse("vm-reboot", VM1).force
    a = parse("watch", "--class", "host,vm", "--class", "host_metrics", "--token", "t.1",
              "--count", "3")
    assert a.classes == [["host", "vm"], ["host_metrics"]] and a.token == "t.1" and a.count == 3


@pytest.mark.parametrize("argv", [
    [], ["no-such-command"], ["vm-get"], ["vm-create"], ["vm-create", "w", "--memory", "lots"],
    ["vm-create", "w", "--vcpus", "0"], ["vm-list", "--power-state", "sleeping"],
    ["watch", "--class", "pool"], ["host-list", "--timeout", "0"],
    ["host-list", "--master", "no-port"], ["vm-create", "w", "--other-config", "novalue"],
    ["host-list", "extra"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert app.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_every_design_rpc_has_a_command():
    names = {c.name for c in app.COMMANDS if not c.offline}
    assert names == {"host-list", "host-get", "host-metrics", "host-disable", "host-enable",
                     "host-declare-dead", "host-forget", "vm-create", "vm-get", "vm-list",
                     "vm-destroy", "vm-start", "vm-shutdown", "vm-reboot", "vm-pause",
                     "vm-unpause", "watch", "top"}
    offline = {c.name for c in app.COMMANDS if c.offline}
    assert offline == {"pool-init", "cert-issue", "token-issue"}


# -- commands against a fake connection -----------------------------------------------------


class FakeConnection(client.Connection):
    """A Connection whose calls are answered from a table, recording requests."""

    def __init__(self, answers: dict, address="127.0.0.1:7000", timeout=30.0) -> None:
        self.address, self.timeout = address, timeout
        self.answers = answers
        self.requests: list[tuple[str, object, str | None]] = []
        names = {"hosts": ["ListHosts", "GetHost", "GetHostMetrics", "DisableHost",
                           "EnableHost", "DeclareDead", "ForgetHost"],
                 "vms": ["CreateVM", "GetVM", "ListVMs", "DestroyVM", "StartVM", "ShutdownVM",
                         "RebootVM", "PauseVM", "UnpauseVM"]}
        for stub, methods in names.items():
            setattr(self, stub, SimpleNamespace(**{m: m for m in methods}))

    @property
    def connected(self) -> bool:
        return True

    def call(self, method, request, progress=None, timeout=None):
        self.requests.append((method, request, progress))
        answer = self.answers[method]
        if isinstance(answer, BaseException):
            raise answer
        return answer(request) if callable(answer) else answer

    def close(self) -> None:
        pass


def run(argv, answers, terminal=False):
    args = app.parse_args(argv, environ={})
    conn = FakeConnection(answers)
    out = io.StringIO()
    ctx = app.Context(conn, render.Output(args.json, stream=out, terminal=terminal), args)
    app.BY_NAME[args.command].run(ctx)
    return conn, out.getvalue()


def test_host_list_table_and_json():
    _, text = run(["host-list"], {"ListHosts": listing()})
    lines = text.splitlines()
    assert lines[0].startswith("UUID") and "LAST BEAT" in lines[0]
    assert lines[1].split()[:5] == [H1, "host1", "127.0.0.1:4001", "true", "true"]
    _, text = run(["host-list", "--json"], {"ListHosts": listing()})
    doc = json.loads(text)
    assert [h["name_label"] for h in doc["hosts"]] == ["host1", "host2"]
    assert doc["host_metrics"][0]["last_updated"].endswith("Z")


def test_names_resolve_to_uuids():
    answers = {"ListHosts": listing(), "ListVMs": vs.ListVMsResponse(vms=[vm(dm.HALTED, "")]),
               "StartVM": lambda r: vm(dm.PAUSED, r.host)}
    conn, text = run(["vm-start", "web1", "--host", "host2", "--paused"], answers)
    method, request, progress = conn.requests[-2]
    assert method == "StartVM"
    assert (request.uuid, request.host, request.paused) == (VM1, H2, True)
    assert progress == "starting web1 on host2"
    assert text.strip() == f"{VM1} (web1) PAUSED on host2"


def test_unknown_or_ambiguous_names():
    answers = {"ListVMs": vs.ListVMsResponse(vms=[vm(), vm()]), "ListHosts": listing()}
    with pytest.raises(CliError) as caught:
        run(["vm-get", "web1"], answers)
    assert caught.value.code == 1 and "2 vms are named 'web1'" in caught.value.message
    with pytest.raises(CliError) as caught:
        run(["host-get", "host9"], answers)
    assert caught.value.message.startswith("error: HANDLE_INVALID class=host uuid=host9")


def test_uuids_are_used_as_given_without_a_lookup():
    conn, text = run(["vm-get", VM1.upper()], {"GetVM": vm()})
    assert [m for m, _, _ in conn.requests] == ["GetVM"]
    assert conn.requests[0][1].uuid == VM1
    assert f"uuid         : {VM1}" in text


def test_vm_create_prints_the_uuid_alone():
    conn, text = run(["vm-create", "web1", "--memory", "2G", "--vcpus", "2"],
                     {"CreateVM": lambda r: vm(dm.HALTED, "")})
    assert text == f"{VM1}\n"
    request = conn.requests[0][1]
    assert (request.name_label, request.memory, request.vcpus) == ("web1", 2 * GiB, 2)
    _, text = run(["vm-create", "web1", "--json"], {"CreateVM": vm(dm.HALTED, "")})
    assert json.loads(text)["power_state"] == "HALTED"


def test_vm_list_filters_and_host_names():
    answers = {"ListHosts": listing(), "ListVMs": vs.ListVMsResponse(vms=[vm()])}
    conn, text = run(["vm-list", "--host", "host1", "--power-state", "RUNNING"], answers)
    request = next(r for m, r, _ in conn.requests if m == "ListVMs")
    assert (request.host, request.power_state) == (H1, dm.RUNNING)
    assert text.splitlines()[1].split()[:4] == [VM1, "web1", "RUNNING", "host1"]


@pytest.mark.parametrize("argv, method, field, value", [
    (["vm-shutdown", VM1], "ShutdownVM", "force", False),
    (["vm-shutdown", VM1, "--force"], "ShutdownVM", "force", True),
    (["vm-reboot", VM1, "--force"], "RebootVM", "force", True),
    (["vm-pause", VM1], "PauseVM", "uuid", VM1),
    (["vm-unpause", VM1], "UnpauseVM", "uuid", VM1),
])
def test_lifecycle_requests_show_progress(argv, method, field, value):
    answers = {method: vm(), "ListHosts": listing()}
    conn, text = run(argv, answers)
    sent = next((r, p) for m, r, p in conn.requests if m == method)
    assert getattr(sent[0], field) == value and sent[1]  # a spinner text was given
    assert text.strip() == f"{VM1} (web1) RUNNING on host1"


def test_host_operations():
    host = listing().hosts[1]
    conn, text = run(["host-disable", H2], {"DisableHost": host})
    assert conn.requests[0][0] == "DisableHost" and text.strip() == f"{H2} (host2) disabled"
    _, text = run(["host-declare-dead", H2, "--json"], {"DeclareDead": host})
    assert json.loads(text)["uuid"] == H2
    _, text = run(["host-forget", H2], {"ForgetHost": hs.ForgetHostResponse()})
    assert text == ""
    _, text = run(["vm-destroy", VM1, "--json"], {"DestroyVM": vs.DestroyVMResponse()})
    assert json.loads(text) == {}


def test_errors_propagate_as_cli_errors():
    offline = CliError(3, f"error: HOST_OFFLINE host={H1}")
    with pytest.raises(CliError) as caught:
        run(["vm-shutdown", VM1], {"ShutdownVM": offline})
    assert caught.value.code == 3


def test_main_prints_one_line_and_returns_the_code(monkeypatch, capsys):
    class Failing(FakeConnection):
        def __init__(self, address, timeout, spinner=None, credentials=None, token=""):
            super().__init__({"ListHosts": CliError(4, f"error: cannot reach the master at "
                                                       f"{address}: connection refused")})

    monkeypatch.setattr(app, "Connection", Failing)
    assert app.main(["--master", "127.0.0.1:9", "host-list"]) == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: cannot reach the master at 127.0.0.1:9: connection refused\n"


def test_main_interrupted_is_130(monkeypatch, capsys):
    class Interrupted(FakeConnection):
        def __init__(self, address, timeout, spinner=None, credentials=None, token=""):
            super().__init__({"ListHosts": KeyboardInterrupt()})

    monkeypatch.setattr(app, "Connection", Interrupted)
    assert app.main(["host-list"]) == 130
    assert "Traceback" not in capsys.readouterr().err


# -- security options ---------------------------------------------------------------------


def test_security_options_default_to_plaintext_admin_and_no_token():
    a = parse("host-list")
    assert (a.tls_dir, a.identity, a.auth_token) == ("", "admin", "")


def test_security_options_from_the_environment():
    env = {"XCP_TLS_DIR": "/pool/tls", "XCP_IDENTITY": "viewer", "XCP_TOKEN": "xcp_t"}
    a = parse("vm-list", env=env)
    assert (a.tls_dir, a.identity, a.auth_token) == ("/pool/tls", "viewer", "xcp_t")
    # Flags win over the environment, before or after the command.
    a = parse("--tls-dir", "/other", "vm-list", "--identity", "bob", "--auth-token", "xcp_u",
              env=env)
    assert (a.tls_dir, a.identity, a.auth_token) == ("/other", "bob", "xcp_u")
    # The offline commands read the directory from the environment too.
    assert parse("token-issue", "--name", "n", "--role", "read-only", env=env).tls_dir == \
        "/pool/tls"


class Recording(FakeConnection):
    """What main() hands the connection: credentials and token."""

    made: list = []

    def __init__(self, address, timeout, spinner=None, credentials=None, token=""):
        super().__init__({"ListHosts": listing()}, address, timeout)
        Recording.made.append(SimpleNamespace(address=address, credentials=credentials,
                                              token=token))


@pytest.fixture
def recording(monkeypatch):
    Recording.made = []
    monkeypatch.setattr(app, "Connection", Recording)
    for name in ("XCP_MASTER", "XCP_TLS_DIR", "XCP_IDENTITY", "XCP_TOKEN", "XCP_CA_CERT"):
        monkeypatch.delenv(name, raising=False)
    return Recording.made


def test_main_plaintext_without_a_tls_dir(recording, capsys):
    assert app.main(["host-list"]) == 0
    assert recording[0].credentials is None and recording[0].token == ""


def test_main_mutual_tls_with_a_tls_dir_and_token(recording, tmp_path, monkeypatch, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    monkeypatch.setenv("XCP_TLS_DIR", str(tls))
    monkeypatch.setenv("XCP_TOKEN", "xcp_from_env")
    assert app.main(["host-list", "--identity", "client"]) == 0
    made = recording[-1]
    assert isinstance(made.credentials, grpc.ChannelCredentials)
    assert made.token == "xcp_from_env"


def test_ca_cert_alone_is_tls_for_the_token_endpoint(recording, tmp_path, monkeypatch, capsys):
    """--ca-cert wins over --tls-dir: no client certificate is read, the token names
    the caller; an unreadable CA file is a usage error that never connects."""
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    monkeypatch.setenv("XCP_CA_CERT", str(tls / "ca.pem"))
    argv = ["--tls-dir", str(tmp_path / "empty"), "--auth-token", "xcp_t", "host-list"]
    assert app.main(argv) == 0
    assert isinstance(recording[-1].credentials, grpc.ChannelCredentials)
    assert recording[-1].token == "xcp_t"
    capsys.readouterr()
    recording.clear()
    assert app.main(["--ca-cert", str(tmp_path / "missing.pem"), "host-list"]) == 2
    assert "error: cannot read --ca-cert" in capsys.readouterr().err and not recording


def test_missing_identity_is_a_usage_error(recording, tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    capsys.readouterr()
    assert app.main(["--tls-dir", str(tls), "--identity", "nobody", "host-list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no certificate for identity 'nobody' in {tls}")
    assert len(err.splitlines()) == 1 and not recording  # never connected
    # Nor does a directory without certificates connect in plaintext.
    assert app.main(["--tls-dir", str(tmp_path / "empty"), "host-list"]) == 2


# -- pool-init, cert-issue, token-issue (files only) ---------------------------------------


def subject(path) -> tuple[str, str, list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sub = pki.subject_of(path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
    except x509.ExtensionNotFound:
        names = []
    return sub.common_name, sub.kind, names


def test_pool_init_creates_the_ca_master_and_clients(tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls), "--address", "10.0.0.5"]) == 0
    out = capsys.readouterr().out
    assert f"written to {tls}" in out and "xcp cert-issue --kind host" in out
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for name in ("ca", "master", "client-admin", "client-viewer", "client-client"):
        assert (tls / f"{name}.pem").exists()
        assert stat.S_IMODE((tls / f"{name}-key.pem").stat().st_mode) == 0o600
    cn, kind, names = subject(tls / "master.pem")
    assert kind == "master" and {"master.xcp", "localhost", "127.0.0.1", "10.0.0.5"} <= set(names)
    assert subject(tls / "client-admin.pem")[:2] == ("admin", "pool-admin")
    assert subject(tls / "client-viewer.pem")[:2] == ("viewer", "read-only")
    assert subject(tls / "client-client.pem")[:2] == ("client", "client")


def test_pool_init_refuses_an_existing_ca(tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    ca = (tls / "ca.pem").read_bytes()
    capsys.readouterr()
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "has a pool CA already" in captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    assert (tls / "ca.pem").read_bytes() == ca  # untouched


def test_certificate_commands_need_a_tls_dir(capsys, monkeypatch):
    monkeypatch.delenv("XCP_TLS_DIR", raising=False)
    for argv in (["pool-init"], ["cert-issue", "--kind", "host", "--name", H1],
                 ["token-issue", "--name", "n", "--role", "read-only"]):
        assert app.main(argv) != 0
        assert "--tls-dir" in capsys.readouterr().err


def test_cert_issue_host_and_client(tmp_path, capsys, monkeypatch):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("XCP_TLS_DIR", str(tls))  # as after `export XCP_TLS_DIR=...`
    assert app.main(["cert-issue", "--kind", "host", "--name", H1]) == 0
    path = tls / f"host-{H1}.pem"
    assert capsys.readouterr().out.strip() == str(path)
    assert subject(path) == (H1, "host", [pki.host_dns_name(H1)])
    assert (tls / f"host-{H1}-key.pem").exists()
    # The certificate chains to the pool CA.
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate(path.read_bytes()).verify_directly_issued_by(ca)

    assert app.main(["cert-issue", "--kind", "read-only", "--name", "auditor"]) == 0
    assert capsys.readouterr().out.strip() == str(tls / "client-auditor.pem")
    assert subject(tls / "client-auditor.pem")[:2] == ("auditor", "read-only")


def test_cert_issue_without_a_ca_or_with_a_bad_kind(tmp_path, capsys):
    assert app.main(["cert-issue", "--tls-dir", str(tmp_path), "--kind", "host",
                     "--name", H1]) == 1
    assert "run xcp pool-init first" in capsys.readouterr().err
    assert app.main(["cert-issue", "--tls-dir", str(tmp_path), "--kind", "root",
                     "--name", "x"]) == 2
    assert app.main(["cert-issue", "--tls-dir", str(tmp_path), "--kind", "host"]) == 2


def test_token_issue_prints_a_token_once(tmp_path, capsys):
    tls = tmp_path / "tls"
    assert app.main(["pool-init", "--tls-dir", str(tls)]) == 0
    capsys.readouterr()
    assert app.main(["token-issue", "--tls-dir", str(tls), "--name", "alice",
                     "--role", "read-only", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("xcp_") and len(token) > 30 and "\n" not in token
    stored = (tls / "tokens.json").read_text()
    assert token not in stored  # only its digest is kept
    assert stat.S_IMODE(os.stat(tls / "tokens.json").st_mode) == 0o600
    (entry,) = json.loads(stored)["tokens"]
    assert (entry["name"], entry["role"], entry["sha256"]) == \
        ("alice", "read-only", pki.token_digest(token))
    assert entry["expires"] is not None
    assert auth.TokenBook(pki.TlsDir(tls)).identify(token) == auth.Identity("alice", "read-only")

    assert app.main(["token-issue", "--tls-dir", str(tls), "--name", "ops",
                     "--role", "pool-admin"]) == 0
    admin = capsys.readouterr().out.strip()
    assert admin != token
    entries = json.loads((tls / "tokens.json").read_text())["tokens"]
    assert [(e["name"], e["role"], e["expires"]) for e in entries][1] == \
        ("ops", "pool-admin", None)


@pytest.mark.parametrize("argv", [
    ["token-issue", "--name", "n", "--role", "superuser"],
    ["token-issue", "--role", "read-only"],
    ["token-issue", "--name", "n", "--role", "read-only", "--ttl", "soon"],
])
def test_token_issue_usage_errors(argv, capsys):
    assert app.main(argv) == 2
    assert "usage:" in capsys.readouterr().err
