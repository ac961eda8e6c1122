"""gRPC channel and server options, in one place.

The numbers follow ../shared/GRPC-FACTS.md: keepalive alone does not catch a
frozen (SIGSTOPped) peer in grpcio 1.85, `grpc.http2.ping_timeout_ms` does; a
client that pings more often than its server permits is cut off with GOAWAY
"too_many_pings", so every server here permits the pings our clients send;
grpcio turns SO_REUSEPORT on by default, which would let a second master share
a port silently, so servers turn it off.
"""

from __future__ import annotations

Options = list[tuple[str, int | str]]

# Servers accept client pings down to this interval, so no client of ours is
# ever cut off for pinging (forwarding pings every contact_timeout / 2).
_MIN_PING_INTERVAL_MS = 200


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


# Limits against hostile or broken peers: streams one connection may hold open
# (one heartbeat, a few watches and calls: 256 is far above any honest client),
# and how long a connection with no stream at all is kept.
MAX_STREAMS_PER_CONNECTION = 256
IDLE_CONNECTION_S = 300.0


def server_options(max_message_bytes: int, keepalive_s: float = 10.0,
                   ping_timeout_s: float = 5.0) -> Options:
    """Options for the master's and the slaves' servers. Server keepalive frees
    transports whose peer vanished without a FIN (liveness itself does not wait
    for it: the reaper judges by heartbeats)."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", _ms(keepalive_s)),
        ("grpc.keepalive_timeout_ms", _ms(ping_timeout_s)),
        ("grpc.http2.ping_timeout_ms", _ms(ping_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # BDP probing pings on received data to grow the receive window; what
        # clients send us is small, and with thousands of heartbeat streams the
        # probes cost a third of the master's CPU (BENCHMARKS.md).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.max_connection_idle_ms", _ms(IDLE_CONNECTION_S)),
    ]


def master_server_options(max_message_bytes: int, ping_every: float,
                          ping_timeout: float) -> Options:
    """The master's server: liveness itself. Its C-core PINGs every connection
    `ping_every` after the last packet and closes the transport when the PING
    is unanswered for `ping_timeout` (settings.ping_timeout: dead_after minus
    the interval); the heartbeat stream then ends as if the slave had crashed.
    It must keep pinging connections that send no data for minutes
    (max_pings_without_data 0: the default stops after two). Every connection,
    API clients included, gets the same PINGs: they are a handful next to the
    hosts, and one port keeps slaves' configuration what it was (BENCHMARKS.md)."""
    return _replace(server_options(max_message_bytes, ping_every, ping_timeout), [
        ("grpc.http2.max_pings_without_data", 0),
    ])


def _replace(options: Options, changes: Options) -> Options:
    """`options` with the keys of `changes` replaced (or added): which of two
    duplicate keys grpc takes is not something to rely on (GRPC-FACTS.md)."""
    keys = {key for key, _ in changes}
    return [(k, v) for k, v in options if k not in keys] + list(changes)


def forwarding_channel_options(contact_timeout: float) -> Options:
    """Options for the master's pooled channel to one slave: a peer that goes
    silent, even in the middle of a long call, is detected within
    contact_timeout (one ping after contact_timeout/2 of quiet, answered
    within contact_timeout/2)."""
    half = _ms(contact_timeout / 2)
    return [
        ("grpc.keepalive_time_ms", half),
        ("grpc.keepalive_timeout_ms", half),
        ("grpc.http2.ping_timeout_ms", half),
        # Ping only while calls are in flight: an idle pool of 10,000 channels
        # must not cost 10,000 pings a second.
        ("grpc.keepalive_permit_without_calls", 0),
        # A clean shutdown sends no data for a minute: keep pinging through it.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", _ms(contact_timeout)),
        ("grpc.enable_retries", 0),
        # The channel owns its connection: channels with equal options to one
        # target would otherwise share a subchannel (GRPC-FACTS.md), and closing a
        # host's channel (declared down) would not drop its suspect connection.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def heartbeat_transport_bound(interval: float) -> float:
    """How long a heartbeat channel built for `interval` takes, at most, to
    notice a silent master: its keepalive time plus timeout (below). HA's
    lease counts with it (xcp_control/lease.py)."""
    return 3 * max(interval, 0.5)


def heartbeat_channel_options(interval: float) -> Options:
    """Options for a slave's channel to the master: a hung master is noticed in
    about three intervals and the slave reconnects. The master PINGs us every
    interval, and C-core restarts our keepalive timer on every packet it
    reads, so while the master is healthy this channel sends no PING of its
    own (measured: GRPC_TRACE=http_keepalive, BENCHMARKS.md)."""
    beat = _ms(max(interval, 0.5))
    return [
        ("grpc.keepalive_time_ms", 2 * beat),
        ("grpc.keepalive_timeout_ms", beat),
        ("grpc.http2.ping_timeout_ms", beat),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", beat),
        ("grpc.enable_retries", 0),
    ]
