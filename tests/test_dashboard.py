"""dashboards/xcp-pool.json: valid Grafana JSON whose every query names only
series the master and slave export (the integration test also runs each
query through a real Prometheus)."""

from __future__ import annotations

import asyncio
import json
import re

from prometheus_client import CollectorRegistry

from tests.master.world import sources
from tests.support.prometheus import DASHBOARD, dashboard_queries
from xcp_control.master.liveness import Liveness
from xcp_control.master.prometheus import MasterMetrics, pool_families
from xcp_control.slave.hypervisor import SimulatedHypervisor
from xcp_control.slave.prometheus import SlaveMetrics, slave_families

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",), "unknown": ("",), "info": ("_info",)}


def series_names(families) -> set[str]:
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def exported() -> set[str]:
    master, slave = MasterMetrics(), SlaveMetrics(SimulatedHypervisor("h", 1 << 30))
    names: set[str] = set()
    for registry in (master.registry, slave.registry):
        names |= series_names(registry.collect())
    names |= series_names(pool_families(sources(Liveness(3.0, 0.0, 0.0))))
    names |= series_names(asyncio.run(slave_families(SimulatedHypervisor("h", 1 << 30),
                                                     type("HB", (), {"connected": True,
                                                                     "sessions": 1})())))
    return names


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "xcp-pool" and doc["panels"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert len(dashboard_queries()) >= 20


def test_every_query_names_exported_series():
    known = exported()
    for expr in dashboard_queries():
        for name in re.findall(r"\b((?:xcp|process)_[a-z_]+)", expr):
            assert name in known, f"{name} (in {expr}) is not exported"


def test_the_contract_names_are_on_the_dashboard():
    text = " ".join(dashboard_queries())
    for name in ("xcp_hosts", "xcp_host_flips_total", "xcp_forwarded_call_seconds_bucket"):
        assert name in text
