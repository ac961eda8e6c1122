"""Election and fencing logic (leadership.Term) with a fake clock: when a
leader acts, when it must stop, what a non-leader answers."""

from __future__ import annotations

import pytest

from xcp_control.errors import XcpError
from xcp_control.master.leadership import Term

TTL = 2.0


def leading_term(now: float = 0.0) -> tuple[Term, list[bool]]:
    term = Term("m1:7000", TTL)
    seen: list[bool] = []
    term.add_listener(seen.append)
    term.renewed(now)
    term.won(epoch=7, now=now)
    return term, seen


def reason(exc: pytest.ExceptionInfo) -> tuple[str, dict]:
    return exc.value.reason, exc.value.params


def test_a_winner_acts_with_its_epoch():
    term, seen = leading_term()
    assert term.acting(0.1) and term.fence(0.1) == 7
    assert seen == [True]
    assert (term.leader, term.epoch) == ("m1:7000", 7)


def test_a_leader_stops_acting_before_its_lease_can_expire():
    term, seen = leading_term(now=10.0)
    # The lease runs from no earlier than the renewal's send time: etcd cannot
    # expire it before 10 + TTL; we stop a margin earlier.
    assert term.acting(10.0 + TTL - term.margin - 0.001)
    assert not term.acting(10.0 + TTL - term.margin)
    term.tick(10.0 + TTL - term.margin)
    assert seen == [True, False]
    with pytest.raises(XcpError) as refused:
        term.fence(10.0 + TTL)
    assert reason(refused) == ("HOST_IS_SLAVE", {"master": ""})


def test_renewals_keep_it_acting_and_a_late_confirmation_counts_from_its_send_time():
    term, _ = leading_term(now=0.0)
    for sent in (0.5, 1.0, 1.5, 2.0):
        term.renewed(sent)
    assert term.acting(2.0 + TTL - term.margin - 0.01)
    term.renewed(1.0)  # an older renewal confirmed late moves nothing back
    assert term.acting(2.0 + TTL - term.margin - 0.01)


def test_a_resumed_leader_refuses_at_once():
    """SIGSTOPped past its lease: the monotonic clock moved on while it slept."""
    term, seen = leading_term(now=100.0)
    with pytest.raises(XcpError):
        term.fence(100.0 + 30.0)
    term.tick(130.0)
    assert seen == [True, False]


def test_another_epoch_ends_our_term_even_with_a_live_lease():
    term, seen = leading_term()
    term.leader_seen("m2:7000", 9, now=0.2)
    assert not term.acting(0.2)
    assert seen == [True, False]
    with pytest.raises(XcpError) as refused:
        term.fence(0.2)
    assert reason(refused) == ("HOST_IS_SLAVE", {"master": "m2:7000"})


def test_a_lost_lease_ends_the_term():
    term, seen = leading_term()
    term.lease_lost(0.3)
    assert not term.acting(0.3) and seen == [True, False]
    assert term.lease_expired(0.3)


def test_a_follower_names_the_leader_and_none_while_there_is_none():
    term = Term("m2:7000", TTL)
    term.renewed(0.0)
    with pytest.raises(XcpError) as none_yet:
        term.fence(0.0)
    assert reason(none_yet) == ("HOST_IS_SLAVE", {"master": ""})
    term.leader_seen("m1:7000", 7, now=0.0)
    with pytest.raises(XcpError) as named:
        term.fence(0.1)
    assert reason(named) == ("HOST_IS_SLAVE", {"master": "m1:7000"})
    term.leader_gone(0.5)
    assert term.leader == "" and term.epoch == 0


def test_no_renewal_ever_means_no_acting():
    term = Term("m1:7000", TTL)
    term.won(epoch=3, now=0.0)
    assert not term.acting(0.0) and term.lease_expired(0.0)


def test_transitions_are_reported_once():
    term, seen = leading_term()
    for now in (0.1, 0.2, 0.3):
        term.tick(now)
    assert seen == [True]
