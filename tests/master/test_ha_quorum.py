"""The leader's quorum proof before an HA restart (master/ha_quorum.py):
who is asked (the lost hosts' witnesses), what counts as vouching (a strict
majority of every list a host may hold, acknowledged and pending), and that
it decides as soon as it knows. The answers come as the heartbeat sessions
would deliver them."""

from __future__ import annotations

import asyncio

from xcp_control.master.ha_quorum import QuorumProof
from xcp_control.master.liveness import Liveness

NEEDED = 5.0


def liveness(live, restored=()) -> Liveness:
    lv = Liveness(report_deadline=30, grace=3, started_at=0.0)
    lv.restore([(h, True) for h in restored], 0.0)
    for h in live:
        lv.beat(h, 1.0)
    return lv


def proof_with(lv, answers: dict, wait: float = 5.0):
    """A proof whose pushes are answered (soon, as a report would be) with
    `answers[host]` seconds, or not at all for None; the hosts asked."""
    proof = QuorumProof(lv, wait=wait)
    asked: list[str] = []

    def push(host, message):
        assert message.report_now
        asked.append(host)
        if answers.get(host) is not None:
            asyncio.get_running_loop().call_soon(proof.on_vouch, host, answers[host])
    proof.push = push
    return proof, asked


def holds(proof, pool, lost=()):
    """The whole pool as the lost hosts' one list (a pool of at most K + 1)."""
    lists = {h: [tuple(m for m in pool if m != h)] for h in lost}
    return asyncio.run(proof.proven(lists, set(lost), NEEDED)) == set(lost)


def test_a_majority_connected_long_enough_vouches():
    answers = {"b": 9.0, "c": 5.0, "d": 1.0, "e": None}
    proof, asked = proof_with(liveness("bcde"), answers, wait=0.05)
    assert holds(proof, "abcde", lost="a") is False  # b and c: two of four
    assert sorted(asked) == ["b", "c", "d", "e"]  # not the lost one
    answers["d"] = 60.0
    assert holds(proof, "abcde", lost="a") is True  # b, c, d: three of four


def test_it_decides_without_waiting_once_the_answer_is_known():
    pool = [f"h{i}" for i in range(20)]
    lists = {"h0": [tuple(pool[1:])]}
    proof, _ = proof_with(liveness(pool), {h: 60.0 for h in pool}, wait=600.0)
    assert asyncio.run(asyncio.wait_for(proof.proven(lists, {"h0"}, NEEDED), 5)) == {"h0"}
    proof, _ = proof_with(liveness(pool), {h: 0.5 for h in pool}, wait=600.0)
    assert asyncio.run(asyncio.wait_for(proof.proven(lists, {"h0"}, NEEDED), 5)) == set()


def test_lost_and_restored_hosts_are_not_asked_and_too_few_asks_nobody():
    proof, asked = proof_with(liveness("b", restored="cd"), {h: 60.0 for h in "bcd"})
    assert holds(proof, "abcd", lost="a") is False
    assert asked == []  # one acknowledged host cannot make two of three


def test_an_answer_outside_a_question_or_from_a_host_not_asked_counts_for_nothing():
    proof, _ = proof_with(liveness("bc"), {"b": None, "c": None}, wait=0.05)
    proof.on_vouch("b", 60.0)  # before the question: ignored
    original = proof.push

    def push(host, message):
        original(host, message)
        asyncio.get_running_loop().call_soon(proof.on_vouch, "zz", 60.0)  # never asked
    proof.push = push
    assert holds(proof, "abc", lost="a") is False


def test_only_the_witnesses_are_asked_and_a_majority_of_each_list_is_needed():
    """a acknowledged [b, c, d] and was sent [d, e, f] since: it may hold
    either. b, c vouch (a majority of the first) but of the second only d."""
    pool = "bcdefghij"
    answers = {h: 60.0 for h in "bcd"}
    proof, asked = proof_with(liveness(pool), answers, wait=0.05)
    lists = {"a": [("b", "c", "d"), ("d", "e", "f")]}
    assert asyncio.run(proof.proven(lists, {"a"}, NEEDED)) == set()
    assert sorted(asked) == list("bcdef")  # not the rest of the pool
    answers["e"] = 60.0
    assert asyncio.run(proof.proven(lists, {"a"}, NEEDED)) == {"a"}


def test_each_lost_host_is_proven_on_its_own_and_one_holding_none_needs_nothing():
    proof, asked = proof_with(liveness("bcdx"), {"b": 60.0, "c": 60.0, "x": 0.1}, wait=0.05)
    lists = {"a": [("b", "c", "x")], "y": [("x", "d")], "fresh": []}
    assert asyncio.run(proof.proven(lists, {"a", "y", "fresh"}, NEEDED)) == {"a", "fresh"}
    # Nobody to ask at all: decided at once.
    proof, asked = proof_with(liveness(""), {}, wait=600.0)
    assert asyncio.run(asyncio.wait_for(proof.proven({"fresh": []}, {"fresh"}, NEEDED), 5)) \
        == {"fresh"} and asked == []
