"""The failover plan: how many host failures every RESTART VM survives."""

from __future__ import annotations

import pytest

from xcp_control.master import ha_plan
from xcp_control.master.ha_plan import PlanHost, PlanVM, plan_exists_for, survives

G = 1024**3


def hosts(*free_gib: int) -> list[PlanHost]:
    return [PlanHost(f"h{i}", g * G) for i, g in enumerate(free_gib)]


def test_an_empty_pool_of_three_survives_two_failures():
    assert plan_exists_for(hosts(4, 4, 4), []) == 2


def test_one_host_survives_nothing():
    assert plan_exists_for(hosts(64), [PlanVM("v", G, "h0")]) == 0


def test_room_for_one_failure_but_not_two():
    pool = hosts(2, 2, 2)
    vms = [PlanVM(f"v{i}", G, f"h{i}") for i in range(3)]
    # one host down: its 1G fits on either other; two down: 2G onto one host with 2G free
    assert plan_exists_for(pool, vms) == 2
    heavy = [PlanVM(f"v{i}", 2 * G, f"h{i}") for i in range(3)]
    assert plan_exists_for(pool, heavy) == 1


def test_placement_order_matters_largest_first_like_the_restarts():
    pool = [PlanHost("a", 3 * G), PlanHost("b", 2 * G), PlanHost("dead", 0)]
    vms = [PlanVM("big", 2 * G, "dead"), PlanVM("small", G, "dead"), PlanVM("mid", 2 * G, "dead")]
    # most-free-first: mid(2G)->a(3G->1G), big(2G)->b(2G->0), small(1G)->a: fits
    assert survives(pool, vms, frozenset({"dead"}))
    assert not survives(pool, vms + [PlanVM("more", G, "dead")], frozenset({"dead"}))


def test_vms_not_on_a_listed_host_are_ignored():
    assert plan_exists_for(hosts(1, 1), [PlanVM("v", 8 * G, "gone")]) == 1


def test_large_pools_use_the_worst_sets(monkeypatch):
    monkeypatch.setattr(ha_plan, "MAX_EXACT_SETS", 1)
    pool = hosts(*([10] * 12))
    vms = [PlanVM(f"v{i}", 4 * G, f"h{i}") for i in range(12)]
    exact = None
    monkeypatch.setattr(ha_plan, "MAX_EXACT_SETS", 10**9)
    exact = plan_exists_for(pool, vms[:4])
    monkeypatch.setattr(ha_plan, "MAX_EXACT_SETS", 1)
    assert plan_exists_for(pool, vms[:4]) == exact
    assert 0 < plan_exists_for(pool, vms) < 12


@pytest.mark.parametrize("n", [1, 2, 5])
def test_never_more_than_hosts_minus_one(n):
    assert plan_exists_for(hosts(*([1] * n)), []) == n - 1
