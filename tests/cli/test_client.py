"""The CLI's calls (cli/client.py): a failed call becomes one error line and an exit code."""

from __future__ import annotations

import grpc
import pytest

from tests.cli.samples import H1, H2, VM1
from tests.support.fakes import FakeRpcError
from xcp_control.cli import app, client, render
from xcp_control.cli.client import classify
from xcp_control.errors import XcpError


# -- errors and exit codes ---------------------------------------------------------------------


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
