"""The CLI's arguments and commands (cli/app.py, cli/commands.py): parsing, and each
command against a fake connection that records the requests it is given; the
security options. No network."""

from __future__ import annotations

import re
import io
import json
from types import SimpleNamespace

import grpc
import pytest

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import vm_service_pb2 as vs

from tests.cli.samples import GiB, H1, H2, VM1, listing, vm
from xcp_control.cli import app, client, render
from xcp_control.cli.client import CliError


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
    a = parse("vm-set", VM1, "--ha-restart-priority", "best-effort", "--ha-restart-order", "-2")
    assert (a.ha_restart_priority, a.ha_restart_order) == (dm.BEST_EFFORT, -2)
    assert parse("vm-set", VM1, "--ha-restart-priority", "none").ha_restart_priority == 0
    assert parse("vm-set", VM1).ha_restart_priority is None
    assert parse("pool-ha-enable").failures == 0
    assert parse("pool-ha-enable", "--failures", "2").failures == 2


@pytest.mark.parametrize("argv", [
    [], ["no-such-command"], ["vm-get"], ["vm-create"], ["vm-create", "w", "--memory", "lots"],
    ["vm-create", "w", "--vcpus", "0"], ["vm-list", "--power-state", "sleeping"],
    ["watch", "--class", "pond"], ["host-list", "--timeout", "0"],
    ["vm-set", "w", "--ha-restart-priority", "always"], ["vm-set", "w", "--ha-restart-order", "x"],
    ["pool-ha-enable", "--failures", "-1"],
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
                     "vm-unpause", "watch", "top", "vm-set", "pool-get", "pool-ha-enable",
                     "pool-ha-disable"}
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
                         "RebootVM", "PauseVM", "UnpauseVM", "UpdateVM"],
                 "pools": ["GetPool", "SetHaConfig"]}
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


def test_vm_set_sends_only_the_flags_given():
    answers = {"ListVMs": vs.ListVMsResponse(vms=[vm(dm.HALTED, "")]),
               "UpdateVM": lambda r: r.vm}
    conn, text = run(["vm-set", "web1", "--ha-restart-priority", "restart"], answers)
    method, request, _ = conn.requests[-1]
    assert method == "UpdateVM" and request.vm.uuid == VM1
    assert list(request.update_mask.paths) == ["ha_restart_priority"]
    assert request.vm.ha_restart_priority == dm.RESTART and "RESTART" in text
    conn, _ = run(["vm-set", "web1", "--ha-restart-order", "3", "--ha-restart-priority", "none"],
                  answers)
    request = conn.requests[-1][1]
    assert list(request.update_mask.paths) == ["ha_restart_priority", "ha_restart_order"]
    assert (request.vm.ha_restart_priority, request.vm.ha_restart_order) == (0, 3)
    with pytest.raises(CliError) as caught:
        run(["vm-set", "web1"], answers)
    assert caught.value.code == 2


def test_pool_ha_commands():
    pool = dm.Pool(uuid="db", ha_enabled=True, ha_host_failures_to_tolerate=2)
    answers = {"GetPool": pool,
               "SetHaConfig": lambda r: dm.Pool(uuid="db", ha_enabled=r.enabled,
                                                ha_host_failures_to_tolerate=r.host_failures_to_tolerate)}
    conn, text = run(["pool-ha-enable", "--failures", "1"], answers)
    assert conn.requests[-1][0] == "SetHaConfig"
    assert (conn.requests[-1][1].enabled, conn.requests[-1][1].host_failures_to_tolerate) == (True, 1)
    assert "ha_enabled" in text
    conn, _ = run(["pool-ha-disable"], answers)  # keeps the stored failures to tolerate
    request = conn.requests[-1][1]
    assert (request.enabled, request.host_failures_to_tolerate) == (False, 2)
    _, text = run(["pool-get", "--json"], answers)
    assert json.loads(text)["ha_host_failures_to_tolerate"] in ("2", 2)


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
    assert re.search(rf"^uuid +: {VM1}$", text, re.M)  # aligned to the longest field name


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
