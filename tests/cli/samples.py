"""Sample records the CLI unit tests render and answer with (two hosts, one VM)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import host_service_pb2 as hs

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
