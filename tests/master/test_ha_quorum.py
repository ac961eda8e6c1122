"""The leader's quorum proof before an HA restart (master/ha_quorum.py):
who is asked, what counts as vouching, and that it decides as soon as it
knows. The answers come as the heartbeat sessions would deliver them."""

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
    return asyncio.run(proof.holds(pool, set(lost), NEEDED))


def test_a_majority_connected_long_enough_vouches():
    answers = {"b": 9.0, "c": 5.0, "d": 1.0, "e": None}
    proof, asked = proof_with(liveness("bcde"), answers, wait=0.05)
    assert holds(proof, "abcde", lost="a") is False  # b and c: two of five
    assert sorted(asked) == ["b", "c", "d", "e"]  # not the lost one
    answers["d"] = 60.0
    assert holds(proof, "abcde", lost="a") is True  # b, c, d: three of five


def test_it_decides_without_waiting_once_the_answer_is_known():
    pool = [f"h{i}" for i in range(20)]
    proof, _ = proof_with(liveness(pool), {h: 60.0 for h in pool}, wait=600.0)
    assert asyncio.run(asyncio.wait_for(proof.holds(pool, set(), NEEDED), 5)) is True
    proof, _ = proof_with(liveness(pool), {h: 0.5 for h in pool}, wait=600.0)
    assert asyncio.run(asyncio.wait_for(proof.holds(pool, set(), NEEDED), 5)) is False


def test_lost_and_restored_hosts_are_not_asked_and_too_few_asks_nobody():
    proof, asked = proof_with(liveness("b", restored="cd"), {h: 60.0 for h in "bcd"})
    assert holds(proof, "abcd", lost="a") is False
    assert asked == []  # one acknowledged host cannot make three of four


def test_an_answer_outside_a_question_or_from_a_host_not_asked_counts_for_nothing():
    proof, _ = proof_with(liveness("bc"), {"b": None, "c": None}, wait=0.05)
    proof.on_vouch("b", 60.0)  # before the question: ignored
    original = proof.push

    def push(host, message):
        original(host, message)
        asyncio.get_running_loop().call_soon(proof.on_vouch, "zz", 60.0)  # never asked
    proof.push = push
    assert holds(proof, "abc", lost="a") is False
