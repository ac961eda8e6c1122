"""xcp-slave as a real process against a fake master.

The fake master is a small grpc.aio LivenessService server run in-process (on
an event loop in a background thread) on a free loopback port; it records
every heartbeat message with its arrival time, answers the Hello with the
interval and acks every full domain list, as the real master does. The tests
drive the slave's SlaveService with grpc.aio stubs on the same loop.
Every process started here is killed in a fixture finalizer.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.daemons import SLAVE_BIN, SlaveProcess
from tests.support.processes import free_port, wait_until
from xcp.v1 import datamodel_pb2
from xcp.v1 import liveness_service_pb2 as lpb
from xcp.v1 import liveness_service_pb2_grpc as lpb_grpc
from xcp.v1 import slave_service_pb2 as spb
from xcp.v1 import slave_service_pb2_grpc as spb_grpc
from xcp_control.errors import XcpError
from xcp_control.model import domains_digest
from xcp_control.slave.hypervisor import DomainInfo
from xcp_control.rpc.options import server_options

INTERVAL_MS = 200
GiB = 1024**3
LINE = re.compile(r"xcp-slave: host (?P<uuid>[0-9a-f-]{36}) "
                  r"listening on (?P<addr>127\.0\.0\.1:\d+)")
VM1 = "aaaaaaaa-0000-4000-8000-000000000001"


# -- an event loop in a thread ---------------------------------------------------


class LoopThread:
    """Runs coroutines on one background event loop, so grpc.aio objects live
    on a single loop while the test body stays synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


# -- the fake master ---------------------------------------------------------------


class FakeMaster(lpb_grpc.LivenessServiceServicer):
    """Records heartbeats; answers Hello with the interval, acks full lists."""

    def __init__(self, port: int, interval_ms: int = INTERVAL_MS) -> None:
        self.port = port
        self.interval_ms = interval_ms
        self.messages: list[tuple[float, lpb.HeartbeatRequest]] = []
        self._server: grpc.aio.Server | None = None

    async def Heartbeat(self, request_iterator, context):
        async for request in request_iterator:
            self.messages.append((time.monotonic(), request))
            kind = request.WhichOneof("kind")
            if kind == "hello":
                yield lpb.HeartbeatResponse(interval_ms=self.interval_ms,
                                            domains_ack=request.hello.domains_digest)
            elif kind == "beat" and request.beat.domains_included:
                yield lpb.HeartbeatResponse(domains_ack=request.beat.domains_digest)
            elif kind == "goodbye":
                return

    async def start(self) -> None:
        self._server = grpc.aio.server(options=server_options(4 * 1024 * 1024))
        lpb_grpc.add_LivenessServiceServicer_to_server(self, self._server)
        assert self._server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    # Readers, called from the test thread.
    def of_kind(self, kind: str) -> list[tuple[float, object]]:
        return [(t, getattr(m, kind)) for t, m in list(self.messages)
                if m.WhichOneof("kind") == kind]

    def beats_after(self, since: float) -> list[tuple[float, lpb.Beat]]:
        return [(t, b) for t, b in self.of_kind("beat") if t > since]


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture
def master(loop_thread):
    fake = FakeMaster(free_port())
    loop_thread.run(fake.start())
    try:
        yield fake
    finally:
        loop_thread.run(fake.stop())


# -- the slave process -------------------------------------------------------------


# Fast simulated domains, so the tests wait for heartbeats, not for boots.
SLAVE_ARGS = ("--memory", "8G", "--boot-time", "0.02", "--clean-shutdown-time", "0.02",
              "--pause-time", "0")


@pytest.fixture
def start_slave(tmp_path):
    """start(master_port, state_dir=None, *extra) -> a started SlaveProcess named host-a,
    whose first stdout line is its `listening on` line; all are killed at teardown."""
    started: list[SlaveProcess] = []

    def start(master_port: int, state_dir: Path | None = None, *extra: str) -> SlaveProcess:
        slave = SlaveProcess(f"127.0.0.1:{master_port}", state_dir or tmp_path / "state",
                             name="host-a", log_dir=tmp_path, extra_args=[*SLAVE_ARGS, *extra])
        started.append(slave)
        slave.start(timeout=15)
        first = slave.stdout[0].rstrip("\n")
        assert LINE.fullmatch(first), f"unexpected first stdout line {first!r}; log:\n{slave.log()}"
        return slave

    try:
        yield start
    finally:
        for slave in started:
            slave.kill()


async def call_slave(address: str, method: str, request):
    async with grpc.aio.insecure_channel(address) as channel:
        return await getattr(spb_grpc.SlaveServiceStub(channel), method)(request, timeout=5)


def hello_of(master: FakeMaster, count: int = 1, timeout: float = 10.0) -> list:
    return wait_until(lambda: len(master.of_kind("hello")) >= count and master.of_kind("hello"),
                      timeout, f"{count} Hello(s)")


# -- tests --------------------------------------------------------------------------


def test_hello_beats_at_the_masters_interval_and_goodbye_on_sigterm(master, start_slave,
                                                                      tmp_path):
    slave = start_slave(master.port)
    hellos = hello_of(master)
    hello_time, hello = hellos[0]
    assert hello.host_uuid == slave.uuid
    assert (tmp_path / "state" / "host-uuid").read_text().strip() == slave.uuid
    assert hello.name_label == "host-a"
    assert hello.address == slave.address
    assert hello.memory_total == hello.memory_free == 8 * GiB
    assert hello.enabled
    assert list(hello.domains) == []
    assert hello.domains_digest == domains_digest([])

    beats = wait_until(lambda: len(master.beats_after(hello_time)) >= 8 and
                       master.beats_after(hello_time), 10, "8 beats")
    times = [hello_time] + [t for t, _ in beats]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.15 <= statistics.median(gaps) <= 0.26, gaps
    # No drift: the 8th beat is due 8 intervals after the Hello's reply.
    assert abs((times[8] - times[0]) - 8 * INTERVAL_MS / 1000) < 0.2, gaps
    assert [b.seq for _, b in beats[:8]] == list(range(1, 9))
    for _, beat in beats:
        assert not beat.domains_included
        assert beat.domains_digest == hello.domains_digest
        assert beat.memory_free == 8 * GiB
        assert lpb.HeartbeatRequest(beat=beat).ByteSize() < 64

    assert slave.terminate() == 0, slave.log()
    goodbyes = master.of_kind("goodbye")
    assert [g.reason for _, g in goodbyes] == ["SIGTERM"]
    assert "Traceback" not in slave.log()


def test_full_domain_list_after_a_change_then_digest_only(master, start_slave, loop_thread):
    slave = start_slave(master.port)
    hello_of(master)
    # The report the change causes may leave before StartDomain's answer is
    # back here: count from before the call.
    after = time.monotonic()
    started = loop_thread.run(call_slave(slave.address, "StartDomain", spb.StartDomainRequest(
        vm_uuid=VM1, memory=GiB, vcpus=2)))
    assert (started.vm_uuid, started.state) == (VM1, datamodel_pb2.RUNNING)
    expected = domains_digest([DomainInfo(VM1, datamodel_pb2.RUNNING, GiB, 2)])

    beats = wait_until(lambda: len(master.beats_after(after)) >= 5 and master.beats_after(after),
                       10, "5 beats after StartDomain")
    full = [b for _, b in beats if b.domains_included]
    assert len(full) == 1, beats
    assert [(d.vm_uuid, d.state, d.memory, d.vcpus) for d in full[0].domains] == [
        (VM1, datamodel_pb2.RUNNING, GiB, 2)]
    assert beats[0][1].domains_included  # on the very next beat
    assert all(b.domains_digest == expected for _, b in beats)
    assert all(b.memory_free == 7 * GiB for _, b in beats)

    listed = loop_thread.run(call_slave(slave.address, "ListDomains", spb.ListDomainsRequest()))
    assert [d.vm_uuid for d in listed.domains] == [VM1]
    assert (listed.memory_total, listed.memory_free) == (8 * GiB, 7 * GiB)

    # Errors travel as catalogued statuses with ErrorInfo.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        loop_thread.run(call_slave(slave.address, "StartDomain", spb.StartDomainRequest(
            vm_uuid=VM1, memory=GiB, vcpus=2)))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = XcpError.from_rpc_error(again.value)
    assert err.reason == "VM_BAD_POWER_STATE"
    assert err.params == {"vm": VM1, "expected": "HALTED", "actual": "RUNNING"}
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        loop_thread.run(call_slave(slave.address, "StartDomain", spb.StartDomainRequest(
            vm_uuid="", memory=GiB, vcpus=1)))
    assert XcpError.from_rpc_error(bad.value).reason == "INVALID_VALUE"

    # Shutdown removes it: the empty list goes once more.
    after = time.monotonic()  # before the call, as above
    loop_thread.run(call_slave(slave.address, "ShutdownDomain",
                               spb.ShutdownDomainRequest(vm_uuid=VM1)))
    beats = wait_until(lambda: len(master.beats_after(after)) >= 3 and master.beats_after(after),
                       10, "3 beats after ShutdownDomain")
    assert [b.domains_included for _, b in beats[:3]] == [True, False, False]
    assert beats[0][1].domains_digest == domains_digest([])


def test_host_uuid_persists_across_restarts(master, start_slave, tmp_path):
    state = tmp_path / "persist"
    first = start_slave(master.port, state)
    assert first.terminate() == 0
    assert str(uuid.UUID((state / "host-uuid").read_text().strip())) == first.uuid
    second = start_slave(master.port, state)
    assert second.uuid == first.uuid
    hellos = hello_of(master, 2)
    assert [h.host_uuid for _, h in hellos] == [first.uuid, first.uuid]
    assert not [p for p in os.listdir(state) if p != "host-uuid"]  # no temp files left


def test_reconnects_within_two_seconds_after_master_restart(master, start_slave, loop_thread):
    slave = start_slave(master.port)
    hello_of(master)
    loop_thread.run(master.stop())
    time.sleep(1.5)  # the slave retries meanwhile and its backoff reaches the cap
    restarted = time.monotonic()
    loop_thread.run(master.start())
    hellos = hello_of(master, 2, timeout=5)
    reconnect = hellos[1][0] - restarted
    assert reconnect < 2.0, f"reconnected after {reconnect:.2f}s"
    assert hellos[1][1].host_uuid == slave.uuid
    # Beats resume on the new stream, numbered from 1.
    beats = wait_until(lambda: master.beats_after(hellos[1][0]), 5, "a beat after reconnect")
    assert beats[0][1].seq == 1
    assert slave.proc.poll() is None


def test_slave_started_before_master_connects_when_it_appears(loop_thread, start_slave):
    fake = FakeMaster(free_port())
    slave = start_slave(fake.port)
    time.sleep(1.0)
    started = time.monotonic()
    loop_thread.run(fake.start())
    try:
        hellos = hello_of(fake, 1, timeout=5)
        assert hellos[0][0] - started < 2.0
        assert hellos[0][1].host_uuid == slave.uuid
    finally:
        loop_thread.run(fake.stop())


def test_reflection_and_health(master, start_slave, loop_thread):
    slave = start_slave(master.port)

    async def probe():
        async with grpc.aio.insecure_channel(slave.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="xcp.v1.SlaveService"), timeout=5)
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            services = [s.name async for r in stream for s in r.list_services_response.service]
            return health.status, services

    status, services = loop_thread.run(probe())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert {"xcp.v1.SlaveService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(services)


@pytest.mark.parametrize("flags, message", [
    (["--memory", "lots"], "--memory"),
    (["--listen", "nowhere"], "--listen must be HOST:PORT"),
    (["--reconnect-cap", "0"], "reconnect_cap must be > 0"),
    (["--boot-time", "-1"], "boot_time must be >= 0"),
])
def test_bad_flags_exit_2_with_one_clear_line(flags, message, tmp_path):
    done = subprocess.run([str(SLAVE_BIN), "--state-dir", str(tmp_path / "s"), *flags],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("xcp-slave: error:") and message in last, done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "s").exists()


def test_port_in_use_exits_1_without_traceback(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([str(SLAVE_BIN), "--state-dir", str(tmp_path / "s"),
                               "--listen", f"127.0.0.1:{port}", "--master", "127.0.0.1:1"],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("device, message", [
    ("/nonexistent/watchdog", "modprobe softdog"),
    ("/dev/null", "is a real device"),  # a character device, refused under tests
])
def test_a_watchdog_device_it_cannot_use_exits_1_before_opening_it(device, message, tmp_path):
    done = subprocess.run([str(SLAVE_BIN), "--state-dir", str(tmp_path / "s"),
                           "--master", "127.0.0.1:1", "--watchdog-device", device],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and message in done.stderr, done.stderr
