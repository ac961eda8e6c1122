"""What `xcp` prints: tables, records, event lines, sizes, ages, errors.

Pure functions from protobuf messages to strings (and rows of strings), so
that every format is unit-tested without a network or a terminal. The only
I/O is in `Output`, which writes to stdout: a rich table on a terminal, plain
aligned columns when piped, or JSON (google.protobuf.json_format with the
proto field names) with `--json`.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from typing import IO, Iterable, Mapping, Sequence

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import host_service_pb2 as hs
from xcp_control.errors import CATALOGUE

# -- JSON ------------------------------------------------------------------------


def to_dict(message: Message) -> dict:
    """The message as canonical proto3 JSON (field names as in the .proto,
    fields at their default value included, int64 as strings, enums by name)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def to_json(message: Message, indent: int | None = 2) -> str:
    """One JSON document; `indent=None` gives one line (for streams)."""
    if indent is None:
        return json.dumps(to_dict(message), separators=(",", ":"), sort_keys=False)
    return json.dumps(to_dict(message), indent=indent)


# -- sizes, times ----------------------------------------------------------------

_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def human_bytes(n: int) -> str:
    """1073741824 -> "1G", 1610612736 -> "1.5G", 512 -> "512B" (binary units)."""
    for unit, factor in _UNITS:
        if abs(n) >= factor:
            text = f"{n / factor:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{n}B"


def timestamp_seconds(ts: Timestamp) -> float | None:
    """Seconds since the epoch, or None for an unset (zero) timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds + ts.nanos / 1e9


def age(seconds: float) -> str:
    """A short duration: "0.4s", "12s", "5m03s", "2h05m", "3d04h"."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def last_beat(metrics: dm.HostMetrics, now: float) -> str:
    """How long ago the master processed the host's last heartbeat."""
    when = timestamp_seconds(metrics.last_updated)
    return "never" if when is None else f"{age(now - when)} ago"


def iso_time(ts: Timestamp) -> str:
    when = timestamp_seconds(ts)
    if when is None:
        return ""
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")


def state_name(state: int) -> str:
    return dm.PowerState.Name(state) if state in dm.PowerState.values() else str(state)


def yes_no(value: bool) -> str:
    return "true" if value else "false"


# -- tables ----------------------------------------------------------------------

Table = tuple[list[str], list[list[str]]]  # header, rows

HOST_COLUMNS = ["UUID", "NAME", "ADDRESS", "ENABLED", "LIVE", "LAST BEAT", "MEM FREE",
                "MEM TOTAL"]
VM_COLUMNS = ["UUID", "NAME", "POWER STATE", "RESIDENT ON", "MEMORY", "VCPUS"]


def host_table(response: hs.ListHostsResponse, now: float | None = None) -> Table:
    """ListHosts as a table; metrics are matched by host uuid (the response
    carries them in the same order, but a missing one must not shift rows)."""
    now = time.time() if now is None else now
    metrics = {m.host: m for m in response.host_metrics}
    rows = []
    for host in response.hosts:
        m = metrics.get(host.uuid, dm.HostMetrics(host=host.uuid))
        rows.append([host.uuid, host.name_label, host.address, yes_no(host.enabled),
                     yes_no(m.live), last_beat(m, now), human_bytes(m.memory_free),
                     human_bytes(m.memory_total)])
    return HOST_COLUMNS, rows


def vm_table(vms: Iterable[dm.VM], host_names: Mapping[str, str] | None = None) -> Table:
    """ListVMs as a table; RESIDENT ON shows the host's name when known."""
    names = host_names or {}
    rows = [[vm.uuid, vm.name_label, state_name(vm.power_state),
             names.get(vm.resident_on, vm.resident_on) if vm.resident_on else "-",
             human_bytes(vm.memory), str(vm.vcpus)] for vm in vms]
    return VM_COLUMNS, rows


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces, no borders: readable, and easy for
    grep, awk and cut. The last column is not padded."""
    widths = [max([len(header[i]), *(len(r[i]) for r in rows)]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


# -- records -----------------------------------------------------------------------


def _value(message: Message, field, now: float) -> str:
    value = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if field.message_type is not None and field.message_type.full_name == \
            "google.protobuf.Timestamp":
        when = timestamp_seconds(value)
        return "never" if when is None else f"{iso_time(value)} ({age(now - when)} ago)"
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name \
            if value in field.enum_type.values_by_number else str(value)
    if field.type == field.TYPE_BOOL:
        return yes_no(value)
    if field.name.startswith("memory"):
        return f"{value} ({human_bytes(value)})"
    return str(value)


def record(message: Message, now: float | None = None) -> list[tuple[str, str]]:
    """(field, value) pairs of a message, in .proto order."""
    now = time.time() if now is None else now
    return [(f.name, _value(message, f, now)) for f in message.DESCRIPTOR.fields]


def plain_record(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)} : {v}".rstrip() for k, v in pairs)


# -- one-line summaries -------------------------------------------------------------


def vm_summary(vm: dm.VM, host_name: str = "") -> str:
    """After a lifecycle call: "<uuid> (web1) RUNNING on host2"."""
    where = f" on {host_name or vm.resident_on}" if vm.resident_on else ""
    return f"{vm.uuid} ({vm.name_label}) {state_name(vm.power_state)}{where}"


def host_summary(host: dm.Host, what: str) -> str:
    return f"{host.uuid} ({host.name_label}) {what}"


# -- events ------------------------------------------------------------------------


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in pairs)


def _quote(value: str) -> str:
    return value if value and re.fullmatch(r"[\w@%+=:,./-]+", value) else shlex.quote(value)


def event_fields(event: ev.Event, host_names: Mapping[str, str]) -> list[tuple[str, str]]:
    kind = event.WhichOneof("object")
    if kind == "host":
        h = event.host
        return [("name_label", h.name_label), ("address", h.address),
                ("enabled", yes_no(h.enabled))]
    if kind == "host_metrics":
        m = event.host_metrics
        return [("host", host_names.get(m.host, m.host)), ("live", yes_no(m.live)),
                ("memory_free", human_bytes(m.memory_free))]
    if kind == "vm":
        v = event.vm
        where = host_names.get(v.resident_on, v.resident_on) if v.resident_on else "-"
        return [("name_label", v.name_label), ("power_state", state_name(v.power_state)),
                ("resident_on", where)]
    return []


def event_line(event: ev.Event, host_names: Mapping[str, str] | None = None,
               received: float | None = None) -> str:
    """One event as one line: local time received, op, class, uuid, the
    fields that matter, and the token to resume after it.

        15:04:05.123 MOD  host_metrics 4874b050-... host=host1 live=false memory_free=64G token=...
        15:04:05.123 SYNC (snapshot complete: live changes follow) token=...
    """
    stamp = datetime.fromtimestamp(time.time() if received is None else received)
    clock = stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
    op = ev.Op.Name(event.op) if event.op in ev.Op.values() else str(event.op)
    if event.op == ev.SYNC:
        return f"{clock} SYNC (snapshot complete: live changes follow) token={event.token}"
    fields = _kv(event_fields(event, host_names or {}))
    return f"{clock} {op:<4} {event.class_name:<12} {event.uuid} {fields} token={event.token}"


# -- errors --------------------------------------------------------------------------


def error_line(reason: str, metadata: Mapping[str, str]) -> str:
    """`error: HOST_OFFLINE host=<uuid>`: the reason and its parameters, the
    catalogue's parameters first in catalogue order, then any others."""
    known = CATALOGUE[reason].params if reason in CATALOGUE else ()
    keys = [k for k in known if k in metadata] + sorted(k for k in metadata if k not in known)
    params = _kv((k, metadata[k]) for k in keys)
    return f"error: {reason}" + (f" {params}" if params else "")


# -- output ----------------------------------------------------------------------------

_STYLES = {"true": "green", "false": "red", "RUNNING": "green", "PAUSED": "yellow",
           "HALTED": "dim", "SUSPENDED": "cyan", "never": "red"}


def rich_table(table: Table):
    """A table for a terminal (rich), values styled as they read (true, RUNNING)."""
    from rich import box
    from rich.table import Table as RichTable

    header, rows = table
    out = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in header:
        out.add_column(name, no_wrap=True, overflow="fold")
    for row in rows:
        out.add_row(*(f"[{_STYLES[c]}]{c}[/]" if c in _STYLES else _escape(c) for c in row))
    return out


class Output:
    """Where results go. `json_mode`: JSON documents; otherwise rich tables on
    a terminal and plain aligned text when piped."""

    def __init__(self, json_mode: bool, stream: IO[str] | None = None,
                 terminal: bool | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty() if terminal is None else terminal

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def json(self, message: Message, indent: int | None = 2) -> None:
        self.write(to_json(message, indent))

    def table(self, table: Table) -> None:
        header, rows = table
        if not self.terminal:
            self.write(plain_table(header, rows))
            return
        from rich.console import Console

        out = rich_table(table)
        # Never squash or fold a uuid: on a narrow terminal the table is drawn
        # at its natural width and the terminal wraps it.
        natural = max(len(line) for line in plain_table(header, rows).splitlines())
        console = Console(file=self.stream, highlight=False)
        console.width = max(console.width, natural + 2 * len(header))
        console.print(out)

    def record(self, message: Message) -> None:
        self.write(plain_record(record(message)))


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)
