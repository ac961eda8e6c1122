"""The CLI's output (cli/render.py): sizes and times, tables and records, JSON, events."""

from __future__ import annotations

import re
import io
import json

import pytest

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import vm_service_pb2 as vs

from tests.cli.samples import GiB, H1, H2, M2, NOW, VM1, listing, ts, vm
from xcp_control.cli import render
from xcp_control.settings import parse_size


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
    assert re.fullmatch(rf"uuid +: {VM1}", text.splitlines()[0])  # aligned to the longest name


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
