"""The slave's fence lease and the liveset rule, on a fake clock."""

from __future__ import annotations

import pytest

from xcp_control.slave.self_fence import FenceLease, HaConfig, Verdict, liveset_verdict

HA = HaConfig(enabled=True, fence_after=10.0, detect_bound=3.0, epoch=7)


def lease(now: float = 100.0, config: HaConfig = HA) -> FenceLease:
    fence = FenceLease(transport_bound=2.0)
    fence.configure(config, now)
    return fence


def test_counts_from_before_the_leaders_last_acknowledgement():
    fence = lease(now=100.0)
    # acknowledged no earlier than 100 - 2 (transport); the leader counts from
    # its detection less 3: the slave's deadline is 100 - 2 - 3 + 10
    assert fence.deadline() == pytest.approx(105.0)
    assert not fence.due(104.9)
    assert fence.due(105.0)


def test_a_healthy_stream_keeps_confirming():
    fence = lease(now=100.0)
    for t in range(101, 140):
        fence.confirm(float(t))
        assert not fence.due(t + 0.5)


def test_fencing_refuses_until_acknowledged_again():
    fence = lease()
    fence.fence()
    assert fence.fenced and not fence.due(10_000.0)  # fences once
    fence.confirm(10_000.0)
    assert not fence.fenced


def test_without_ha_nothing_is_ever_due():
    fence = lease(config=HaConfig(enabled=False))
    assert fence.deadline() is None and not fence.due(1e9)


def test_never_acknowledged_never_due():
    fence = FenceLease(transport_bound=2.0)
    assert not fence.due(1e9)


def test_extend_after_a_keep_verdict_counts_again():
    fence = lease(now=100.0)
    assert fence.due(106.0)
    fence.extend(106.0)
    assert not fence.due(110.0) and fence.due(111.0)


@pytest.mark.parametrize("peers, reached, hearing, verdict", [
    (4, 3, 0, Verdict.KEEP),  # a majority reached, nobody hears the leader: master tier down
    (4, 2, 0, Verdict.FENCE),  # half is no majority
    (4, 4, 1, Verdict.FENCE),  # someone hears the leader: it is this host that is cut off
    (0, 0, 0, Verdict.FENCE),  # alone: cannot tell, fence
    (1, 1, 0, Verdict.KEEP),
])
def test_liveset_rule(peers, reached, hearing, verdict):
    assert liveset_verdict(peers, reached, hearing) is verdict
