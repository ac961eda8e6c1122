"""HA settings through `xcp` against a real pool (a master and two slaves as
processes, mutual TLS): pool-get, pool-ha-enable/disable (durable across a
master restart), vm-set, and a StartVM the failover plan refuses, with the
catalogued error on one line; a read-only identity may read but not change."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli_pool import failed, ok
from tests.support.daemons import MasterProcess
from tests.support.pool import RunningPool

GiB = 1024**3


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    # Two 64 GiB hosts (the slave's default --memory).
    with RunningPool(tmp_path_factory.mktemp("ha-pool"), slaves=2, tls=True) as running:
        yield running


def pool_json(pool) -> dict:
    return json.loads(ok(pool.xcp("pool-get", "--json")).stdout)


def test_pool_ha_settings_and_the_plan(pool):
    doc = pool_json(pool)
    assert not doc.get("ha_enabled", False)
    doc = json.loads(ok(pool.xcp("pool-ha-enable", "--failures", "1", "--json")).stdout)
    assert doc["ha_enabled"] is True and int(doc["ha_host_failures_to_tolerate"]) == 1
    failed(pool.xcp("pool-ha-enable", identity="viewer"), 1,
           "error: RBAC_PERMISSION_DENIED role=read-only "
           "operation=/xcp.v1.PoolService/SetHaConfig")
    assert pool_json(pool)["ha_enabled"] is True
    # A RESTART VM of 40 GiB: one host failure is survivable (the other has room).
    big = ok(pool.xcp("vm-create", "big", "--memory", "40G")).stdout.strip()
    vm = json.loads(ok(pool.xcp("vm-set", big, "--ha-restart-priority", "restart",
                                "--ha-restart-order", "1", "--json")).stdout)
    assert vm["ha_restart_priority"] == "RESTART" and int(vm["ha_restart_order"]) == 1
    ok(pool.xcp("vm-start", big))
    assert int(pool_json(pool)["ha_plan_exists_for"]) == 1
    # A second one could not be restarted if its host failed: refused by the plan.
    second = ok(pool.xcp("vm-create", "second", "--memory", "40G")).stdout.strip()
    ok(pool.xcp("vm-set", second, "--ha-restart-priority", "restart"))
    failed(pool.xcp("vm-start", second), 1,
           "error: HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN")
    assert json.loads(ok(pool.xcp("vm-get", second, "--json")).stdout)["power_state"] == \
        "HALTED"
    # Disabled: no plan check; the failures to tolerate are kept.
    doc = json.loads(ok(pool.xcp("pool-ha-disable", "--json")).stdout)
    assert not doc.get("ha_enabled", False) and int(doc["ha_host_failures_to_tolerate"]) == 1
    ok(pool.xcp("vm-start", second))
    failed(pool.xcp("vm-set", second, "--ha-restart-order", "99999999999"), 1,
           "error: INVALID_VALUE")


def test_ha_settings_survive_a_master_restart(pool):
    ok(pool.xcp("pool-ha-enable", "--failures", "0"))
    old = pool.master
    old.stop()
    pool.master = MasterProcess(old.db_path, listen=old.address, extra_args=old.extra_args,
                                log_dir=pool.root).start()
    doc = pool_json(pool)
    assert doc["ha_enabled"] is True and doc["uuid"]
