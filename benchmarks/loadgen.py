"""Load generator: thousands of simulated slaves from a few processes.

Each simulated host is what the master sees of a real slave: its own uuid
(uuid5 of the run seed and its index, so a rerun with the same seed reuses the
same hosts and the master's database does not grow), its own TCP connection
answering the master's PINGs, a keepalive PING of its own only after 2 x interval
without a packet, like the real slave's grpc channel
(rpc/options.heartbeat_channel_options: C-core restarts the timer on every packet
read), one LivenessService.Heartbeat stream carrying a Hello and then one lean
Beat (a report) per report interval the master gives, or per interval from an
older master (seq, memory_free, domains digest: no domain list), on a random
phase so reports are spread over the interval. A broken stream reconnects with the real slave's policy
(heartbeat.Reconnect: within 1 s when unreachable, growing to 5 min when turned away),
so a master restarting, or too busy to take new streams, sees the reconnects a
pool of real slaves would make.

Two clients (`--client`): `h2` (default) speaks the same gRPC stream over a lean
hand-rolled HTTP/2 connection (see H2Host); `grpc` uses grpc.aio channels with
`grpc.use_local_subchannel_pool` = 1 and a fresh channel per stream, exactly as
xcp_control/heartbeat.py does. grpc.aio costs ~130 us of client CPU per beat
(a thread hand-off per write), so one core of it drives only ~4,000 hosts;
h2 drives 10,000 from the one core the benchmarks give it. Both load the
master the same way (BENCHMARKS.md shows the calibration).

One connection per host rather than a handful of hosts per channel: the
master's per-host costs (a transport, its keepalive pings, a file descriptor,
HTTP/2 state) are part of what is measured, and hosts sharing a connection would
hide them (GRPC-FACTS: 39 KB per stream with its own connection, 23 KB shared).

Bounded: at most MAX_HOSTS hosts and MAX_DURATION seconds; first streams open
at `--open-rate` per second in all (each process opens its k-th host at
k / its share of the rate; reconnects are paced by the backoff alone, like
real slaves); loopback masters only; stops by
itself after `--duration` (or on SIGTERM / SIGINT), saying Goodbye on every
stream (or not, with --no-goodbye), and reports per-process counts.

    python benchmarks/loadgen.py --master 127.0.0.1:7000 --hosts 1000 --procs 2 --duration 30

As a library (the benchmarks): `LoadGen(master, hosts, procs, ...).start()`,
`.wait_open(n)`, `.totals()`, `.stop()`; workers are child processes of this
script (`--worker`) pinned to `cpus`, printing one JSON line per second and a
summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid as uuid_module
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from benchmarks import common  # noqa: E402
from xcp.v1 import liveness_service_pb2 as pb, liveness_service_pb2_grpc as pb_grpc  # noqa: E402
from xcp_control.slave.backoff import (  # noqa: E402
    BUSY_BACKOFF_CAP, Reconnect, TurnedAway, hello_timeout, turned_away)
from xcp_control.slave.reports import next_tick  # noqa: E402
from xcp_control.model import domains_digest  # noqa: E402
from xcp_control.rpc.options import heartbeat_channel_options  # noqa: E402

MAX_HOSTS = 50_000
MAX_DURATION = 3_600.0
NAMESPACE = uuid_module.UUID("6f1c2a52-3c8e-4a57-9d0b-6c1e7f4b2a90")
MEMORY_TOTAL = 256 * 1024**3
EMPTY_DIGEST = domains_digest([])


def host_uuid(seed: str, index: int) -> str:
    return str(uuid_module.uuid5(NAMESPACE, f"{seed}:{index}"))


def check_loopback(master: str) -> None:
    host = master.rpartition(":")[0].strip("[]")
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise SystemExit(f"loadgen: cannot resolve {host}: {exc}") from None
    if not all(ipaddress.ip_address(a).is_loopback or _is_local(a) for a in addrs):
        raise SystemExit(f"loadgen: refusing a master not on this machine: {master}")


def _is_local(address: str) -> bool:
    """An address of this machine (the root side of a test host's veth, say):
    traffic to it never leaves the machine. Only local addresses can be bound."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


# -- the worker: one process, many simulated hosts ---------------------------------


class Counts:
    def __init__(self) -> None:
        self.opened = 0  # Hello answered (streams up), reconnects included
        self.failed = 0  # attempts that never got a Hello reply
        self.broken = 0  # streams that ended while up (not by us)
        self.beats = 0  # Beats written
        self.replies = 0  # responses after the Hello (send_domains etc.)
        self.up = 0  # streams up right now
        self.resent = 0  # beats carrying the (empty) domain list, as the master asked
        self.ha_configs = 0  # HA configs received (Hello answers and pushes)
        self.ha_peers = 0  # peers those configs listed, in all (parsed ones)
        self.ha_bytes = 0  # bytes of HA configs (large ones counted unparsed: H2Host.take)
        self.pings_in = 0  # PINGs from the master (keepalive, BDP probes) answered
        self.pings_out = 0  # keepalive PINGs we sent (none while the master PINGs us)
        self.stalled = 0  # beats not sent: no HTTP/2 send window (h2 client)
        self.late = 0  # beats sent more than 250 ms after they were due (we are overloaded)
        self.max_late = 0.0  # seconds: the latest beat


NO_HELLO_REPLY = "no Hello reply in time"
ENDED_WITH_TRAILERS = "master ended the stream (trailers)"


class SimHost:
    """One simulated slave: a heartbeat stream kept open until the worker stops."""

    def __init__(self, worker: "Worker", index: int) -> None:
        self.w = worker
        self.index = index
        self.uuid = host_uuid(worker.seed, index)
        self.rng = random.Random(f"{worker.seed}:{index}")
        self.backoff = Reconnect(worker.reconnect_cap, worker.busy_cap, rng=self.rng)
        self.wake: asyncio.Future | None = None
        self.up = False
        self.resend = False

    def poke(self, *_: object) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def run(self) -> None:
        w = self.w
        # Bounded open rate: the k-th host of this process opens at k / rate.
        await self.sleep((self.index - w.first) / w.open_rate)
        while not w.stopping:
            busy = False
            try:
                await self.session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect, like a slave
                busy = turned_away(exc)
                w.note(exc)
                if self.up:
                    w.counts.broken += 1
                else:
                    w.counts.failed += 1
            finally:
                if self.up:
                    w.counts.up -= 1
                    self.up = False
            if not w.stopping:
                await self.sleep(self.backoff.after_failure(busy))

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.wake = loop.create_future()
        handle = loop.call_later(seconds, self.poke)
        try:
            await self.wake
        finally:
            handle.cancel()
            self.wake = None

    async def session(self) -> None:
        w = self.w
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(w.master, options=w.options) as channel:
            call = pb_grpc.LivenessServiceStub(channel).Heartbeat()
            try:
                hello = pb.HeartbeatRequest(hello=pb.Hello(
                    host_uuid=self.uuid, name_label=f"sim-{w.seed}-{self.index:05d}",
                    address=f"127.0.0.1:{20000 + self.index % 40000}",
                    memory_total=MEMORY_TOTAL, memory_free=MEMORY_TOTAL,
                    domains_digest=EMPTY_DIGEST, enabled=True, fence_after_ms=w.fence_after_ms))
                await asyncio.wait_for(call.write(hello), w.io_timeout)
                try:
                    reply = await asyncio.wait_for(call.read(), w.hello_timeout)
                except asyncio.TimeoutError:
                    raise TurnedAway(NO_HELLO_REPLY) from None
                if reply is grpc.aio.EOF:
                    raise ConnectionError("stream ended before the Hello reply")
                interval = reply.interval_ms / 1000 if reply.interval_ms > 0 else 1.0
                if reply.report_interval_ms > 0:  # reports, not beats (heartbeat._apply)
                    interval = reply.report_interval_ms / 1000
                self.backoff.welcomed()
                self.up = True
                w.counts.up += 1
                w.counts.opened += 1
                if w.report_sessions:
                    w.emit({"type": "session", "host": self.index, "t": time.monotonic()})
                reader = asyncio.ensure_future(self.read(call))
                reader.add_done_callback(self.poke)
                due = loop.time() + self.rng.uniform(0, interval)
                seq = 0
                try:
                    while True:
                        if not reader.done():
                            await self.sleep(max(0.0, due - loop.time()))
                        if w.stopping:
                            if w.goodbye:
                                await self.say_goodbye(call, reader)
                            return
                        if reader.done():
                            reader.result()
                            raise ConnectionError("master ended the stream")
                        late = loop.time() - due
                        if late > w.counts.max_late:
                            w.counts.max_late = late
                        if late > 0.25:
                            w.counts.late += 1
                        seq += 1
                        beat = pb.Beat(seq=seq, memory_free=MEMORY_TOTAL,
                                       domains_digest=EMPTY_DIGEST)
                        if self.resend:  # the master asked for the full (empty) list
                            beat.domains_included = True
                            self.resend = False
                            w.counts.resent += 1
                        await call.write(pb.HeartbeatRequest(beat=beat))
                        w.counts.beats += 1
                        due = next_tick(due, interval, loop.time())
                finally:
                    reader.cancel()
            finally:
                call.cancel()

    async def read(self, call) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            self.w.counts.replies += 1
            if response.send_domains:
                self.resend = True

    async def say_goodbye(self, call, reader: asyncio.Future) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(call.write(pb.HeartbeatRequest(
                goodbye=pb.Goodbye(reason="loadgen done"))), 1.0)
            await asyncio.wait_for(call.done_writing(), 1.0)
            await asyncio.wait({reader}, timeout=1.0)


# -- a lean HTTP/2 client: the same gRPC stream on the wire, a tenth of the CPU ----------
#
# grpc.aio costs about 130 us of client CPU per message (a thread hand-off and an
# eventfd write per write, see BENCHMARKS.md), so one core of grpc.aio clients cannot
# drive 10,000 hosts beating once a second. The master cannot tell this client from
# grpcio's: same connection per host, same HTTP/2 frames, same gRPC messages, and
# (by default) the same keepalive pings as a real slave (one PING every
# 2 x interval, like transport.heartbeat_channel_options). It decodes only what it
# needs: SETTINGS (acked), PING (answered), WINDOW_UPDATE (send window kept), DATA
# (gRPC messages: the Hello reply's interval), and the end of the stream
# (trailers, RST_STREAM, GOAWAY, a closed connection), which makes it reconnect
# with the slave's backoff.

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
_PATH = "/xcp.v1.LivenessService/Heartbeat"
_RECV_WINDOW = 1 << 20
_LARGE = 4096  # bytes: a gRPC message this large is an HA config with peers (take())


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream.to_bytes(4, "big") + payload)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def _request_headers(authority: str) -> bytes:
    block = b"".join(_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", _PATH),
        (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
        ("user-agent", "xcp-loadgen")))
    return _frame(_HEADERS, _END_HEADERS, 1, block)


def _grpc_data(message: bytes, end: bool = False) -> bytes:
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    return _frame(_DATA, _END_STREAM if end else 0, 1, body)


_CLIENT_START = (_PREFACE
                 + _frame(_SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big")
                          + (4).to_bytes(2, "big") + _RECV_WINDOW.to_bytes(4, "big"))
                 + _frame(_WINDOW, 0, 0, (_RECV_WINDOW - 65535).to_bytes(4, "big")))


_SHARED_READ = memoryview(bytearray(64 * 1024))  # one loop, one read at a time


class H2Host(asyncio.BufferedProtocol):
    """One simulated slave over a hand-rolled HTTP/2 connection (see above)."""

    def __init__(self, worker: "Worker", index: int) -> None:
        self.w = worker
        self.index = index
        self.uuid = host_uuid(worker.seed, index)
        self.rng = random.Random(f"{worker.seed}:{index}")
        self.backoff = Reconnect(worker.reconnect_cap, worker.busy_cap, rng=self.rng)
        self.transport: asyncio.Transport | None = None
        self.up = False
        self.timer: asyncio.TimerHandle | None = None
        self.pinger: asyncio.TimerHandle | None = None
        self.seq = 0
        self.resend = False  # the master asked for our (empty) domain list
        self.interval = 1.0  # between reports: the master's report interval
        self.ping_every = 0.0  # our keepalive, restarted by every packet we read
        self.last_rx = 0.0
        self.due = 0.0
        self.buf = bytearray()
        self.msg = bytearray()
        self.skip = 0  # bytes of a large message still to drop (take())
        self.send_window = 65535  # connection and stream alike: our beats are tiny
        self.received = 0
        self.ended = True
        # HA: what this host holds of the leader's config, as a slave keeps it
        # across streams and says in its Hello and acknowledgements (heartbeat.py).
        self.ha_generation = 0
        self.ha_witness_version = 0
        self.hello = self._hello()

    def _hello(self) -> bytes:
        w, index = self.w, self.index
        return pb.HeartbeatRequest(hello=pb.Hello(
            host_uuid=self.uuid, name_label=f"sim-{w.seed}-{index:05d}",
            address=f"127.0.0.1:{20000 + index % 40000}", memory_total=MEMORY_TOTAL,
            memory_free=MEMORY_TOTAL, domains_digest=EMPTY_DIGEST, enabled=True,
            fence_after_ms=w.fence_after_ms, ha_generation=self.ha_generation,
            ha_witness_version=self.ha_witness_version)).SerializeToString()

    # -- scheduling

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later((self.index - self.w.first) / self.w.open_rate,
                                     self.connect)

    def connect(self) -> None:
        if self.w.stopping:
            return
        self.ended = False
        self.up = False
        self.resend = False
        self.buf.clear()
        self.msg.clear()
        self.skip = 0
        self.send_window = 65535
        self.received = 0
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.w.hello_timeout, self.fail, NO_HELLO_REPLY)
        task = loop.create_task(loop.create_connection(lambda: self, self.w.host, self.w.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(f"{type(exc).__name__}: {exc}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.ended:  # timed out while connecting
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        if self.ha_generation or self.ha_witness_version:
            self.hello = self._hello()  # says what it holds
        transport.write(_CLIENT_START + _request_headers(self.w.master)  # type: ignore[attr-defined]
                        + _grpc_data(self.hello))

    def fail(self, why: str) -> None:
        """The stream is over (or never came up): reconnect after a backoff."""
        if self.ended:
            return
        self.ended = True
        w = self.w
        if w.stopping:  # the master's answer to our Goodbye
            if self.up:
                w.counts.up -= 1
                self.up = False
            self.close()
            return
        w.errors[why[-90:]] = w.errors.get(why[-90:], 0) + 1
        # Turned away (heartbeat.turned_away): no reply to the Hello, or the stream
        # ended with trailers before it (TOO_BUSY is a trailers-only answer).
        busy = not self.up and why in (NO_HELLO_REPLY, ENDED_WITH_TRAILERS)
        if self.up:
            w.counts.broken += 1
            w.counts.up -= 1
            self.up = False
        else:
            w.counts.failed += 1
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        if not w.stopping:
            self.timer = asyncio.get_running_loop().call_later(
                self.backoff.after_failure(busy), self.connect)

    def _cancel_timers(self) -> None:
        for t in (self.timer, self.pinger):
            if t is not None:
                t.cancel()
        self.timer = self.pinger = None

    def beat(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - self.due
        c = self.w.counts
        if late > c.max_late:
            c.max_late = late
        if late > 0.25:
            c.late += 1
        self.seq += 1
        beat = pb.Beat(seq=self.seq, memory_free=MEMORY_TOTAL, domains_digest=EMPTY_DIGEST)
        if self.resend:  # the master asked for the full list (BeatComposer does the same)
            beat.domains_included = True
            self.resend = False
            c.resent += 1
        frame = _grpc_data(pb.HeartbeatRequest(beat=beat).SerializeToString())
        if self.send_window >= len(frame) - 9:
            self.send_window -= len(frame) - 9
            self.transport.write(frame)  # type: ignore[union-attr]
            c.beats += 1
        else:
            c.stalled += 1  # flow control: the master stopped reading us
        self.due = next_tick(self.due, self.interval, now)
        self.timer = loop.call_at(self.due, self.beat)

    def ack_ha(self) -> None:
        """The report acknowledging an HA config applied (heartbeat.py sends it at once)."""
        if self.transport is None:
            return
        self.seq += 1
        frame = _grpc_data(pb.HeartbeatRequest(beat=pb.Beat(
            seq=self.seq, memory_free=MEMORY_TOTAL, domains_digest=EMPTY_DIGEST, ha_ack=True,
            ha_generation=self.ha_generation,
            ha_witness_version=self.ha_witness_version)).SerializeToString())
        if self.send_window >= len(frame) - 9:
            self.send_window -= len(frame) - 9
            self.transport.write(frame)
            self.w.counts.beats += 1

    def ping(self) -> None:
        """grpc's client keepalive: a PING once nothing was read for ping_every
        (C-core restarts the timer on every packet read, so while the master
        PINGs us more often than that we never PING it)."""
        loop = asyncio.get_running_loop()
        quiet_since = self.last_rx
        if loop.time() - quiet_since < self.ping_every:
            self.pinger = loop.call_at(quiet_since + self.ping_every, self.ping)
            return
        self.w.counts.pings_out += 1
        self.transport.write(_frame(_PING, 0, 0, b"xcpload!"))  # type: ignore[union-attr]
        self.pinger = loop.call_later(self.ping_every, self.ping)

    def goodbye(self) -> None:
        """Goodbye and half-close; the worker closes the connection a moment later."""
        self._cancel_timers()
        if self.up and self.transport is not None and not self.ended:
            self.transport.write(_grpc_data(pb.HeartbeatRequest(
                goodbye=pb.Goodbye(reason="loadgen done")).SerializeToString(), end=True))

    def close(self) -> None:
        self._cancel_timers()
        self.ended = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ended:
            self.fail(f"connection lost: {exc}")

    def get_buffer(self, sizehint: int) -> memoryview:
        # asyncio's plain Protocol allocates 256 KiB per read (an mmap and munmap
        # each time): reading into one shared buffer costs nothing.
        return _SHARED_READ

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_SHARED_READ[:nbytes])

    def data_received(self, data) -> None:
        self.last_rx = time.monotonic()  # the loop's clock (asyncio uses monotonic)
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if n - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            self.on_frame(kind, flags, payload)
            if self.ended:
                return
        del buf[:pos]

    def on_frame(self, kind: int, flags: int, payload: bytes) -> None:
        t = self.transport
        if t is None:
            return
        if kind == _DATA:
            self.received += len(payload)
            if self.received > _RECV_WINDOW // 2:
                inc = self.received.to_bytes(4, "big")
                t.write(_frame(_WINDOW, 0, 0, inc) + _frame(_WINDOW, 0, 1, inc))
                self.received = 0
            self.take(payload)
            if flags & _END_STREAM:
                self.fail("master ended the stream")
        elif kind == _HEADERS:
            if flags & _END_STREAM:
                self.fail(ENDED_WITH_TRAILERS)
        elif kind == _SETTINGS:
            if not flags & _ACK:
                t.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING:
            if not flags & _ACK:
                self.w.counts.pings_in += 1
                t.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW:
            self.send_window += int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        elif kind == _RST:
            self.fail("RST_STREAM")
        elif kind == _GOAWAY:
            self.fail("GOAWAY")

    def take(self, data: bytes) -> None:
        """gRPC messages out of DATA payloads. A large one is the HA config with
        the pool's peers (O(hosts) bytes, the only large message the master
        sends): counted and dropped unparsed. A real slave parses its own list
        on its own host; 10,000 simulated ones parsing theirs on one core would
        measure the load generator, not the master, whose cost (building,
        serialising, sending) is unchanged."""
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
        self.msg += data
        while len(self.msg) >= 5:
            size = int.from_bytes(self.msg[1:5], "big")
            if size > _LARGE:
                self.w.counts.ha_configs += 1
                self.w.counts.ha_bytes += size
                have = len(self.msg) - 5
                self.skip = max(0, size - have)
                del self.msg[:5 + min(size, have)]
                continue
            if len(self.msg) < 5 + size:
                break
            body = bytes(self.msg[5:5 + size])
            del self.msg[:5 + size]
            self.on_message(body)

    def on_message(self, body: bytes) -> None:
        w = self.w
        reply = pb.HeartbeatResponse.FromString(body)
        if reply.ha_config:  # HA's config: taken as a slave takes it (heartbeat._apply)
            w.counts.ha_configs += 1
            w.counts.ha_peers += len(reply.peers)
            w.counts.ha_bytes += len(body)
            self.ha_generation = reply.ha_generation if reply.ha_enabled else 0
            if reply.witness_version:
                self.ha_witness_version = reply.witness_version
            self.ack_ha()
        if self.up:
            w.counts.replies += 1
            if reply.send_domains:
                self.resend = True
            return
        ping_interval = reply.interval_ms / 1000 if reply.interval_ms > 0 else 1.0
        # Report interval as the slave reads it (heartbeat._apply): an older
        # master sets none and wants one report per interval.
        self.interval = (reply.report_interval_ms / 1000 if reply.report_interval_ms > 0
                         else ping_interval)
        self.ping_every = 2 * max(ping_interval, 0.5) if w.keepalive else 0.0
        self.up = True
        self.backoff.welcomed()
        w.counts.up += 1
        w.counts.opened += 1
        if w.report_sessions:
            w.emit({"type": "session", "host": self.index, "t": time.monotonic()})
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.due = loop.time() + self.rng.uniform(0, self.interval)
        self.timer = loop.call_at(self.due, self.beat)
        if self.ping_every > 0:
            self.pinger = loop.call_at(self.last_rx + self.ping_every, self.ping)


class Worker:
    def __init__(self, a: argparse.Namespace) -> None:
        self.master = a.master
        self.seed = a.seed
        self.proc = a.proc_index
        self.first, self.last = a.first, a.last
        self.duration = a.duration
        self.goodbye = a.goodbye
        self.report_sessions = a.report_sessions
        self.reconnect_cap = a.reconnect_cap
        self.fence_after_ms = round(a.fence_after * 1000)  # 0: none sent (the master's default)
        self.io_timeout = max(2 * a.interval, 0.5)
        # --old-reconnect: the slaves before the storm fix (BENCHMARKS.md), for A/B runs:
        # a Hello unanswered within 2 intervals, and no further backoff when turned away.
        self.hello_timeout = self.io_timeout if a.old_reconnect else hello_timeout(a.interval)
        self.busy_cap = a.reconnect_cap if a.old_reconnect else a.busy_cap
        self.open_rate = a.open_rate
        self.options = heartbeat_channel_options(a.interval) + [
            ("grpc.use_local_subchannel_pool", 1)]
        if a.no_keepalive:
            self.options = [("grpc.use_local_subchannel_pool", 1)]
        self.client = a.client
        self.host, _, port = a.master.rpartition(":")
        self.host, self.port = self.host.strip("[]"), int(port)
        self.keepalive = not a.no_keepalive
        self.counts = Counts()
        self.errors: dict[str, int] = {}
        self.stopping = False
        self.hosts: list[SimHost] = []
        self.started = time.monotonic()

    def note(self, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            what = f"{exc.code().name}: {exc.details()}"[-90:]
        else:
            what = f"{type(exc).__name__}: {exc}"[-90:]
        self.errors[what] = self.errors.get(what, 0) + 1

    def emit(self, record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    def snapshot(self, kind: str) -> dict:
        c = self.counts
        return {"type": kind, "proc": self.proc, "hosts": len(self.hosts), "up": c.up,
                "opened": c.opened, "failed": c.failed, "broken": c.broken,
                "beats": c.beats, "replies": c.replies, "late": c.late, "stalled": c.stalled, "pings_in": c.pings_in, "pings_out": c.pings_out, "resent": c.resent,
                "ha_configs": c.ha_configs, "ha_peers": c.ha_peers, "ha_bytes": c.ha_bytes,
                "max_late": round(c.max_late, 3),
                "elapsed": round(time.monotonic() - self.started, 3),
                "cpu_s": round(common.cpu_seconds(os.getpid()), 3),
                "rss_mb": round(common.rss_bytes(os.getpid()) / 2**20, 1),
                "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])[:5])}

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        ticker = asyncio.ensure_future(self.tick())
        if self.client == "h2":
            self.hosts = [H2Host(self, i) for i in range(self.first, self.last)]
            for h in self.hosts:
                h.start()
        else:
            self.hosts = [SimHost(self, i) for i in range(self.first, self.last)]
            tasks = [asyncio.ensure_future(h.run()) for h in self.hosts]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), self.duration)
        self.stopping = True
        if self.client == "h2":
            for h in self.hosts:
                if self.goodbye:
                    h.goodbye()
                else:
                    h.close()
            await asyncio.sleep(1.0 if self.goodbye else 0.1)
            for h in self.hosts:
                h.close()
        else:
            # Stop: every host says Goodbye at its next wake-up, which we make now.
            for h in self.hosts:
                h.poke()
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        ticker.cancel()
        self.emit(self.snapshot("summary"))

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.emit(self.snapshot("progress"))


def worker_main(a: argparse.Namespace) -> int:
    common.raise_nofile()
    asyncio.run(Worker(a).main())
    sys.stdout.flush()
    os._exit(0)  # do not wait for grpc's threads over thousands of closed channels


# -- the library: a set of worker processes ------------------------------------------


class LoadGen:
    """`procs` worker processes simulating `hosts` hosts in all."""

    def __init__(self, master: str, hosts: int, procs: int = 2, duration: float = 30.0,
                 seed: str = "bench", open_rate: float = 1000.0, interval: float = 1.0,
                 goodbye: bool = True, report_sessions: bool = False,
                 reconnect_cap: float = 1.0, cpus: set[int] | None = common.LOAD_CPUS,
                 first_index: int = 0, keepalive: bool = True, client: str = "h2",
                 old_reconnect: bool = False, busy_cap: float = BUSY_BACKOFF_CAP,
                 fence_after: float = 0.0) -> None:
        check_loopback(master)
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION}]")
        self.master, self.hosts, self.procs = master, hosts, max(1, min(procs, hosts))
        self.duration, self.seed, self.open_rate = duration, seed, open_rate
        self.interval, self.goodbye, self.report_sessions = interval, goodbye, report_sessions
        self.reconnect_cap, self.cpus, self.first_index = reconnect_cap, cpus, first_index
        self.keepalive = keepalive
        self.old_reconnect, self.busy_cap = old_reconnect, busy_cap
        self.fence_after = fence_after
        if client not in ("h2", "grpc"):
            raise ValueError("client must be h2 or grpc")
        self.client = client
        self.workers: list[common.Proc] = []
        self.latest: dict[int, dict] = {}
        self.summaries: dict[int, dict] = {}
        self.sessions: list[tuple[int, float]] = []  # (host index, monotonic time)
        self._lock = threading.Lock()

    def uuids(self) -> list[str]:
        return [host_uuid(self.seed, i)
                for i in range(self.first_index, self.first_index + self.hosts)]

    def start(self) -> "LoadGen":
        common.raise_nofile()
        per = self.hosts // self.procs
        extra = self.hosts % self.procs
        first = self.first_index
        for p in range(self.procs):
            count = per + (1 if p < extra else 0)
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker",
                    "--master", self.master, "--seed", self.seed, "--proc-index", str(p),
                    "--first", str(first), "--last", str(first + count),
                    "--duration", str(self.duration), "--interval", str(self.interval),
                    "--open-rate", str(self.open_rate / self.procs),
                    "--reconnect-cap", str(self.reconnect_cap), "--busy-cap", str(self.busy_cap),
                    "--client", self.client, "--fence-after", str(self.fence_after)]
            if not self.goodbye:
                argv.append("--no-goodbye")
            if self.report_sessions:
                argv.append("--report-sessions")
            if not self.keepalive:
                argv.append("--no-keepalive")
            if self.old_reconnect:
                argv.append("--old-reconnect")
            first += count
            proc = common.Proc(argv, f"loadgen-{p}", cpus=self.cpus)
            self.workers.append(proc)
            threading.Thread(target=self._follow, args=(p, proc), daemon=True).start()
        return self

    def _follow(self, p: int, proc: common.Proc) -> None:
        while True:
            line = proc.lines.get()
            if line is None:
                return
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                with self._lock:
                    if record["type"] == "session":
                        self.sessions.append((record["host"], record["t"]))
                    elif record["type"] == "summary":
                        self.summaries[p] = record
                        self.latest[p] = record
                    else:
                        self.latest[p] = record

    def totals(self) -> dict:
        with self._lock:
            records = list(self.latest.values())
        keys = ("up", "opened", "failed", "broken", "beats", "replies", "late", "stalled",
                "pings_in", "pings_out", "resent", "ha_configs", "ha_peers", "ha_bytes")
        out = {k: sum(r.get(k, 0) for r in records) for k in keys}
        out["max_late"] = max([r.get("max_late", 0.0) for r in records] or [0.0])
        out["cpu_s"] = sum(r.get("cpu_s", 0.0) for r in records)
        out["rss_mb"] = sum(r.get("rss_mb", 0.0) for r in records)
        return out

    def wait_open(self, n: int | None = None, timeout: float = 120.0) -> float:
        """Wait until `n` (default all) streams are up; seconds it took."""
        n = self.hosts if n is None else n
        t0 = time.monotonic()
        while self.totals()["up"] < n:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"only {self.totals()['up']} of {n} streams up "
                                   f"after {timeout}s: {self.totals()}")
            if not any(w.running for w in self.workers):
                raise RuntimeError("load generator exited: "
                                   + self.workers[0].stderr_text()[-2000:])
            time.sleep(0.1)
        return time.monotonic() - t0

    def stop(self, timeout: float = 20.0) -> dict[int, dict]:
        """SIGTERM every worker (Goodbye, summary), SIGKILL stragglers."""
        for w in self.workers:
            w.signal(signal.SIGTERM)
        return self.join(timeout)

    def join(self, timeout: float) -> dict[int, dict]:
        end = time.monotonic() + timeout
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except Exception:  # noqa: BLE001
                w.kill()
            w.stop(1)
        time.sleep(0.2)  # let the stdout threads take the summaries
        return dict(self.summaries)

    def __enter__(self) -> "LoadGen":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- command line ---------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--master", default="127.0.0.1:7000", help="master HOST:PORT (loopback)")
    p.add_argument("--hosts", type=int, default=1000, help="simulated hosts in all")
    p.add_argument("--procs", type=int, default=2, help="worker processes")
    p.add_argument("--duration", type=float, default=30.0, help="seconds, then stop")
    p.add_argument("--seed", default="bench", help="run seed: same seed, same host uuids")
    p.add_argument("--open-rate", type=float, default=1000.0,
                   help="first-stream opens per second, all processes together")
    p.add_argument("--interval", type=float, default=1.0,
                   help="beat interval until the master says otherwise")
    p.add_argument("--reconnect-cap", type=float, default=1.0,
                   help="longest backoff between reconnects (the slave's default)")
    p.add_argument("--no-goodbye", dest="goodbye", action="store_false",
                   help="end streams without Goodbye (the master marks hosts down as crashed)")
    p.add_argument("--no-keepalive", action="store_true",
                   help="channels without the slave's keepalive pings")
    p.add_argument("--client", choices=("h2", "grpc"), default="h2",
                   help="h2: lean hand-rolled HTTP/2 (default, ~10x cheaper); grpc: grpc.aio")
    p.add_argument("--cpus", default="", help="pin workers to these cores, e.g. 1 or 0-1")
    p.add_argument("--busy-cap", type=float, default=BUSY_BACKOFF_CAP,
                   help="longest backoff after the master turned a host away (default: the "
                        "slave's, %(default)s s)")
    p.add_argument("--old-reconnect", action="store_true",
                   help="reconnect as slaves did before the storm fix: Hello timeout 2 "
                        "intervals, backoff capped at --reconnect-cap even when turned away")
    p.add_argument("--fence-after", type=float, default=0.0,
                   help="fence_after (s) each Hello asks for, as `xcp-slave --fence-after` "
                        "does; 0 (default): none sent, the master's default")
    p.add_argument("--report-sessions", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--proc-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--last", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    check_loopback(a.master)
    if not 1 <= a.hosts <= MAX_HOSTS:
        p.error(f"--hosts must be 1..{MAX_HOSTS}")
    if not 0 < a.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION}]")
    if not 0 < a.open_rate <= 100_000:
        p.error("--open-rate must be in (0, 100000]")
    return a


def _cpuset(text: str) -> set[int] | None:
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.worker:
        return worker_main(a)
    common.install_sigterm_handler()
    gen = LoadGen(a.master, a.hosts, a.procs, a.duration, a.seed, a.open_rate, a.interval,
                  a.goodbye, reconnect_cap=a.reconnect_cap, cpus=_cpuset(a.cpus),
                  keepalive=not a.no_keepalive, client=a.client,
                  old_reconnect=a.old_reconnect, busy_cap=a.busy_cap)
    print(f"# {common.machine_line()}; {common.load_note()}", flush=True)
    t0 = time.monotonic()
    gen.start()
    try:
        last = 0.0
        while any(w.running for w in gen.workers):
            time.sleep(0.5)
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                t = gen.totals()
                print(f"t={time.monotonic() - t0:6.1f}s up={t['up']} opened={t['opened']} "
                      f"failed={t['failed']} broken={t['broken']} beats={t['beats']}", flush=True)
            if time.monotonic() - t0 > a.duration + 30:
                break
    except KeyboardInterrupt:
        pass
    finally:
        summaries = gen.stop()
    rows = [[p, s["hosts"], s["opened"], s["failed"], s["broken"], s["beats"], s["replies"],
             s["late"], f"{s['max_late'] * 1000:.0f}",
             f"{s['cpu_s'] / max(s['elapsed'], 1e-9) * 100:.0f}%", s["rss_mb"]]
            for p, s in sorted(summaries.items())]
    print(common.table(rows, ["proc", "hosts", "opened", "failed", "broken", "beats",
                              "replies", "late", "max_late_ms", "cpu", "rss_mb"]))
    for p, s in sorted(summaries.items()):
        for what, n in s.get("errors", {}).items():
            print(f"proc {p}: {n} x {what}")
    return 0 if len(summaries) == len(gen.workers) else 1


if __name__ == "__main__":
    sys.exit(main())
