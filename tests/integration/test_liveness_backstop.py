"""The report backstop against a real master process (issue 10): a slave whose
report loop is stuck while its process answers the master's PINGs keeps its
connection (the transport sees nothing wrong), and is marked not live by the
backstop, 3 x report_interval after its last report; the master then ends its
stream, since an open stream means "counted live".

The stuck slave is a child process: it says Hello, reads the reply, and then
sends nothing more (its request generator blocks for ever) while grpc's C-core
keeps answering PINGs. Short settings keep the test at a few seconds: PING every
0.5 s, dead_after 1.5 s, report_interval 1 s (so the backstop is 3 s)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid as uuid_module

import pytest


from tests.support.processes import MasterProcess, channel, stubs, wait_until
from xcp.v1 import host_service_pb2 as hs

pytestmark = pytest.mark.timeout(60)

INTERVAL, DEAD_AFTER, REPORT = 0.5, 1.5, 1.0
BACKSTOP = 3 * REPORT

STUCK_SLAVE = r"""
import sys, threading, grpc
from xcp.v1 import liveness_service_pb2 as pb, liveness_service_pb2_grpc as pb_grpc

master, host = sys.argv[1], sys.argv[2]
stuck = threading.Event()

def requests():
    yield pb.HeartbeatRequest(hello=pb.Hello(host_uuid=host, name_label="stuck",
                                             address="127.0.0.1:9", memory_total=1 << 30,
                                             memory_free=1 << 30, enabled=True))
    stuck.wait()  # the report loop is stuck: no report ever again

channel = grpc.insecure_channel(master)
replies = pb_grpc.LivenessServiceStub(channel).Heartbeat(requests())
next(replies)
print("hello answered", flush=True)
try:
    for _ in replies:
        pass
    print("stream ended", flush=True)
except grpc.RpcError as exc:
    print(f"stream ended {exc.code().name}", flush=True)
import os
os._exit(0)  # the stuck request thread must not hold the exit
"""


def test_a_slave_that_answers_pings_but_sends_no_report_is_not_live_after_the_backstop(
        tmp_path) -> None:
    host = str(uuid_module.uuid4())
    args = ["--heartbeat-interval", str(INTERVAL), "--dead-after", str(DEAD_AFTER),
            "--report-interval", str(REPORT), "--startup-grace", "0"]
    with MasterProcess(tmp_path / "pool.db", extra_args=args).start() as master, \
            channel(master.address) as ch:
        api = stubs(ch)
        slave = subprocess.Popen([sys.executable, "-c", STUCK_SLAVE, master.address, host],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert slave.stdout.readline().strip() == "hello answered"
            hello_at = time.monotonic()

            def live() -> bool:
                return api.hosts.GetHostMetrics(hs.GetHostMetricsRequest(uuid=host),
                                                timeout=5).live

            assert live()
            # Well past dead_after: its C-core answers every PING, so the transport
            # stays up and the host stays live.
            time.sleep(DEAD_AFTER + 0.5)
            assert live(), master.stderr_text()
            wait_until(lambda: not live(), timeout=BACKSTOP + 3, interval=0.02,
                       what="the backstop to mark the stuck host not live")
            elapsed = time.monotonic() - hello_at
            print(f"stuck slave: not live {elapsed:.2f}s after its Hello")
            assert BACKSTOP - 0.2 <= elapsed < BACKSTOP + 2.0
            assert "missed its heartbeats" in master.stderr_text()
            # The master ends the stream of a host it no longer counts live.
            assert slave.wait(timeout=5) == 0, master.stderr_text()
            assert slave.stdout.readline().startswith("stream ended")
        finally:
            slave.kill()
            slave.wait(timeout=10)
