"""The leader's quorum proof before an HA restart (master/ha_quorum.py):
who is asked, what counts as vouching, and that it stops once it knows."""

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


class Answers:
    """PeerStatus answers by host: seconds connected, or None (unreachable)."""

    def __init__(self, by_host) -> None:
        self.by_host = by_host
        self.asked: list[str] = []

    async def __call__(self, host):
        self.asked.append(host)
        await asyncio.sleep(0)
        return self.by_host[host]


def holds(proof, pool, lost=()):
    return asyncio.run(proof.holds(pool, set(lost), NEEDED))


def test_a_majority_connected_long_enough_vouches():
    answers = Answers({"b": 9.0, "c": 5.0, "d": 0.0, "e": None})
    proof = QuorumProof(liveness("bcde"), answers)
    assert holds(proof, "abcde", lost="a") is False  # b, c: two of five
    answers.by_host["d"] = 60.0
    assert holds(proof, "abcde", lost="a") is True  # b, c, d: three of five


def test_a_host_connected_for_less_than_needed_does_not_vouch():
    proof = QuorumProof(liveness("bc"), Answers({"b": NEEDED - 0.1, "c": 600.0}))
    assert holds(proof, "abc", lost="a") is False


def test_lost_and_restored_hosts_are_not_asked_and_too_few_asks_nobody():
    answers = Answers({"b": 60.0, "c": 60.0, "d": 60.0})
    proof = QuorumProof(liveness("b", restored="cd"), answers)
    assert holds(proof, "abcd", lost="a") is False
    assert answers.asked == []  # one acknowledged host cannot make three of four


def test_it_stops_asking_once_the_answer_is_known():
    pool = [f"h{i}" for i in range(20)]
    answers = Answers({h: 60.0 for h in pool})
    proof = QuorumProof(liveness(pool), answers, concurrency=1)
    assert holds(proof, pool) is True
    # A strict majority of 20 is 11; one more question may already be out.
    assert 11 <= len(answers.asked) <= 12
    answers = Answers({h: None for h in pool})
    proof = QuorumProof(liveness(pool), answers, concurrency=1)
    assert holds(proof, pool) is False
    assert 10 <= len(answers.asked) <= 11  # after 10 refusals 11 can no longer vouch
