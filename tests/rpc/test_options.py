"""The master's server options carry liveness (issue 10): PING every interval,
the derived PING timeout, PINGs on connections that send no data, no key twice."""

from xcp_control.rpc.options import master_server_options, server_options
from xcp_control.settings import MasterSettings


def test_the_master_pings_every_interval_and_waits_the_derived_timeout():
    s = MasterSettings().validate()
    options = master_server_options(s.max_message_bytes, s.heartbeat_interval, s.ping_timeout)
    found = dict(options)
    assert found["grpc.keepalive_time_ms"] == 2000
    assert found["grpc.keepalive_timeout_ms"] == 1000
    assert found["grpc.http2.ping_timeout_ms"] == 1000  # the one that catches a frozen peer
    assert found["grpc.keepalive_permit_without_calls"] == 1
    assert found["grpc.http2.max_pings_without_data"] == 0  # reports come every 10 s only
    assert found["grpc.so_reuseport"] == 0
    keys = [k for k, _ in options]
    assert len(keys) == len(set(keys))


def test_slaves_servers_do_not_ping_idle_connections_for_ever():
    """A slave's server must not PING the master's 10,000 pooled channels each
    interval: it keeps grpc's default (stop after two PINGs without data)."""
    assert "grpc.http2.max_pings_without_data" not in dict(server_options(1 << 20, 2.0, 1.0))
