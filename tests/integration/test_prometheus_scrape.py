"""A real Prometheus (Debian's package, on loopback, scraping every second)
scrapes a real master and its slaves; the test reads what it stored through
Prometheus's HTTP API: hosts by liveness, the flip a SIGKILL causes, and the
outcome of forwarded calls, OK and HOST_OFFLINE."""

from __future__ import annotations

import signal
import urllib.parse

import grpc
import pytest

from tests.support.pool import RunningPool
from tests.support.clients import channel, stubs
from tests.support.prometheus import PrometheusServer, dashboard_queries, prometheus_or_skip
from xcp_control.errors import error_info
from xcp.v1 import vm_service_pb2 as vs

METRICS = ["--metrics-listen", "127.0.0.1:0"]
STREAM_ENDED = 'xcp_host_flips_total{to="not_live",cause="stream_ended"}'
FORWARDED = 'xcp_forwarded_call_seconds_count{{method="{method}",reason="{reason}"}}'
FORWARDED_P99 = ("histogram_quantile(0.99, sum by (le, method) "
                 "(rate(xcp_forwarded_call_seconds_bucket[1m])))")


def target(url: str) -> str:
    """HOST:PORT of a /metrics URL (Prometheus's default path is /metrics)."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.path == "/metrics", url
    return parsed.netloc


def test_prometheus_scrapes_master_and_slaves(tmp_path):
    binary = prometheus_or_skip()
    with RunningPool(tmp_path, slaves=2, master_args=METRICS, slave_args=METRICS) as pool:
        jobs = {"xcp-master": [target(pool.master.metrics_url)],
                "xcp-slave": [target(s.metrics_url) for s in pool.slaves.values()]}
        with PrometheusServer(binary, jobs) as prom:
            prom.wait_for("count(up == 1)", lambda v: v == 3)
            assert prom.wait_for('xcp_hosts{live="true"}', lambda v: v == 2) == 2
            prom.wait_for("sum(xcp_slave_master_connected)", lambda v: v == 2)
            before = prom.wait_for(STREAM_ENDED, lambda v: v is not None)

            victim = pool.slaves["host2"]
            with channel(pool.address) as ch:
                api = stubs(ch)
                vm = api.vms.CreateVM(vs.CreateVMRequest(name_label="scraped", memory=64 << 20,
                                                         vcpus=1), timeout=10)
                api.vms.StartVM(vs.StartVMRequest(uuid=vm.uuid, host=victim.uuid), timeout=30)
                prom.wait_for(FORWARDED.format(method="StartDomain", reason="OK"),
                              lambda v: v == 1)
                prom.wait_for('sum(xcp_slave_domains{state="RUNNING"})', lambda v: v == 1)

                victim.kill(signal.SIGKILL)
                prom.wait_for(STREAM_ENDED, lambda v: v == before + 1)
                prom.wait_for('xcp_hosts{live="false"}', lambda v: v == 1)

                # Its VM still names it: the forwarded shutdown fails at once.
                with pytest.raises(grpc.RpcError) as failed:
                    api.vms.ShutdownVM(vs.ShutdownVMRequest(uuid=vm.uuid, force=True), timeout=10)
                assert error_info(failed.value).reason == "HOST_OFFLINE"
            prom.wait_for(FORWARDED.format(method="ShutdownDomain", reason="HOST_OFFLINE"),
                          lambda v: v == 1)
            prom.wait_for('xcp_api_calls_total{method="ShutdownVM",code="FAILED_PRECONDITION"}',
                          lambda v: v == 1)
            # The other flip causes were scraped too, from zero.
            assert prom.value('xcp_host_flips_total{to="not_live",cause="reaper"}') == 0
            # Every query of the Grafana dashboard is valid PromQL over these series.
            for expr in dashboard_queries():
                prom.query(expr.replace("$master", ".*").replace("$slave", ".*"))
            assert prom.query(FORWARDED_P99)
