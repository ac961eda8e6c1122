"""When the leader may restart a failed host's VMs, and in what order."""

from __future__ import annotations

import pytest

from xcp.v1 import datamodel_pb2 as dm
from xcp_control.lease import DECISION_DELAY
from xcp_control.master.ha_restart import (PendingRestarts, fenced_by, has_quorum,
                                           restart_sequence)
from xcp_control.slave.self_fence import FenceLease, HaConfig


def vm(uuid: str, priority: int = dm.HA_RESTART_PRIORITY_UNSPECIFIED, order: int = 0) -> dm.VM:
    return dm.VM(uuid=uuid, ha_restart_priority=priority, ha_restart_order=order)


def test_restart_order_then_best_effort_then_the_rest():
    restart, best, other = restart_sequence([
        vm("d", dm.BEST_EFFORT, 0), vm("c", dm.RESTART, 2), vm("a", dm.RESTART, 1),
        vm("b", dm.RESTART, 1), vm("e")])
    assert [v.uuid for v in restart] == ["a", "b", "c"]
    assert [v.uuid for v in best] == ["d"]
    assert [v.uuid for v in other] == ["e"]


@pytest.mark.parametrize("live, hosts, quorum", [(3, 4, True), (2, 4, False), (1, 1, True),
                                                 (1, 2, False), (0, 0, False)])
def test_quorum_is_a_strict_majority(live, hosts, quorum):
    assert has_quorum(live, hosts) is quorum


@pytest.mark.parametrize("transport_bound, detect_bound", [(2.0, 3.0), (3.0, 3.0), (0.5, 1.0)])
def test_the_slave_always_fences_before_the_leader_restarts(transport_bound, detect_bound):
    """The lease rule, end to end on one timeline: the last contact at 100 s;
    the slave last saw its stream open at most transport_bound later, the
    leader noticed the loss at most detect_bound later. Whatever the moments
    within those bounds, the slave's fence comes before the leader's restart."""
    config = HaConfig(enabled=True, fence_after=10.0, detect_bound=detect_bound)
    last_contact = 100.0
    for slave_saw in (last_contact, last_contact + transport_bound):
        for leader_saw in (last_contact, last_contact + detect_bound):
            fence = FenceLease(transport_bound)
            fence.configure(config, slave_saw)
            restart_at = fenced_by(leader_saw, config.fence_after, detect_bound)
            assert fence.deadline() < restart_at
            assert restart_at - last_contact <= config.fence_after + DECISION_DELAY + 0.5 + 0.1


def test_retries_back_off_and_keep_the_order():
    pending = PendingRestarts()
    pending.add(["a", "b", "c"])
    pending.add(["a"])  # already pending: once
    assert pending.ready(0.0) == ["a", "b", "c"]
    pending.failed("b", now=0.0)
    assert pending.ready(0.5) == ["a", "c"]
    assert pending.ready(1.0) == ["a", "b", "c"]
    pending.failed("b", now=1.0)
    assert "b" not in pending.ready(2.9) and "b" in pending.ready(3.0)
    pending.done("a")
    assert len(pending) == 2 and pending.ready(100.0) == ["b", "c"]
