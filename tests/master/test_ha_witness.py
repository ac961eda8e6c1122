"""Witness sets (master/ha_witness.py): the choice, its stability, the
replacement of a member gone, and the record of what a host may hold."""

from __future__ import annotations

from xcp_control.master.ha_witness import (
    K, Ring, Witnesses, can_still_reach, choose, majority_vouches)


def hosts(n: int, prefix: str = "h") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_a_small_pool_gives_everyone_else():
    pool = hosts(K + 1)
    ring = Ring(pool)
    for h in pool:
        assert choose(h, (), ring) == tuple(sorted(set(pool) - {h}))
    ring.add("lone-newcomer")  # K + 2 hosts: now K of the K + 1 others
    assert len(choose("lone-newcomer", (), ring)) == K


def test_at_most_k_deterministic_and_not_the_host_itself():
    pool = hosts(1000)
    ring = Ring(pool)
    chosen = choose("h00007", (), ring)
    assert len(chosen) == K and "h00007" not in chosen
    assert Ring(reversed(pool)) and choose("h00007", (), Ring(reversed(pool))) == chosen
    # Spread: each host is some host's witness, about K on average.
    load: dict[str, int] = {}
    for h in pool:
        for w in choose(h, (), ring):
            load[w] = load.get(w, 0) + 1
    assert sum(load.values()) == K * 1000 and max(load.values()) < 4 * K


def test_stable_as_the_pool_grows_and_grown_while_below_k():
    ring = Ring(hosts(10))
    small = choose("h00000", (), ring)
    assert len(small) == 9
    for h in hosts(200, "late"):
        ring.add(h)
    grown = choose("h00000", small, ring)
    assert set(small) <= set(grown) and len(grown) == K  # kept, then grown to K
    assert choose("h00000", grown, ring) == grown  # full: joins change nothing
    for h in hosts(500, "later"):
        ring.add(h)
    assert choose("h00000", grown, ring) == grown


def test_a_member_that_left_or_lost_its_address_is_replaced_and_only_it():
    ring = Ring(hosts(100))
    before = choose("h00000", (), ring)
    gone = before[3]
    ring.remove(gone)
    after = choose("h00000", before, ring)
    assert gone not in after and len(after) == K
    assert len(set(before) & set(after)) == K - 1  # one replaced, the rest kept


def test_the_ring_finds_its_neighbours_without_scoring_everyone():
    ring = Ring(hosts(10_000))
    chosen = choose("h00042", (), ring)
    assert len(chosen) == K  # bisection: no 10,000 hashes per choice
    assert ring.remove("h00042") is True and ring.remove("h00042") is False
    assert "h00042" not in ring and len(ring) == 9_999


def test_one_pending_at_a_time_and_what_the_host_may_hold():
    a, b = ("x", "y", "z"), ("x", "y", "w")
    state = Witnesses()
    assert state.may_hold() == []  # holds none: nothing to prove
    sent = state.want(a)
    assert (sent.pending_version, sent.pending, sent.may_hold()) == (1, a, [a])
    assert sent.want(b) is None  # waits for the acknowledgement
    acked = sent.reported(1, hello=False)
    assert (acked.acked_version, acked.acked, acked.pending_version) == (1, a, 0)
    assert acked.want(a) is None  # holds it already
    both = acked.want(b)
    assert both.may_hold() == [a, b] and both.latest == (2, b)
    assert both.reported(7, hello=False) == both  # a version never sent: believed not
    assert both.reported(1, hello=False) == both  # a report of the old one: still pending


def test_a_hello_says_what_the_host_will_never_apply():
    a, b = ("x", "y", "z"), ("x", "y", "w")
    both = Witnesses(1, a).want(b)
    assert both.reported(2, hello=True) == Witnesses(2, b)  # it had applied the pending one
    assert both.reported(1, hello=True) == Witnesses(1, a)  # its old stream (and b) is gone
    fresh = both.reported(0, hello=True)  # a fresh process holds none
    assert fresh.may_hold() == [] and fresh.want(a).pending_version == 3  # never reused


def test_majorities():
    members = ("a", "b", "c", "d")
    assert not majority_vouches(members, {"a", "b"}) and majority_vouches(members, set("abc"))
    assert can_still_reach(members, {"a"}) and not can_still_reach(members, {"a", "b"})
    assert Witnesses.of(None) == Witnesses()
