"""Election and fencing logic (leadership.Term, Gate) with a fake clock: when a
leader acts, when it must stop, what a non-leader answers; a suspended term
(renewals failing for a moment) resumed with the same epoch, and the gate
that holds the code that acts meanwhile."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xcp_control.errors import XcpError
from xcp_control.master import etcd_client as ec
from xcp_control.master.etcd_keys import Keys
from xcp_control.master.leadership import CALL, CallTerm, Campaign, Gate, Term

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


# -- a suspended term (etcd's raft leader lost: renewals fail for a moment) --


def ended_counter(term: Term) -> list[int]:
    ended: list[int] = []
    term.add_term_listener(lambda: ended.append(1))
    return ended


def test_a_suspended_term_stays_ours_and_a_renewal_resumes_it_with_the_same_epoch():
    term, seen = leading_term(now=0.0)
    ended = ended_counter(term)
    stop = TTL - term.margin
    term.tick(stop)
    assert not term.acting(stop) and term.suspended(stop) and term.holds
    assert term.visible_leader(stop) == ""  # named to no one while not acting...
    assert term.named_leader(stop) == "m1:7000"  # ...but GetPool still says who holds the key
    with pytest.raises(XcpError):
        term.fence(stop)
    term.renewed(stop + 0.5)  # the first renewal a new etcd raft leader confirmed
    term.tick(stop + 0.5)
    assert term.fence(stop + 0.5) == 7
    assert seen == [True, False, True] and ended == []


def test_a_suspended_term_is_waited_for_only_within_its_patience():
    term, _ = leading_term(now=0.0)
    assert term.patience == 3 * TTL
    assert term.suspended(term.patience - 0.01)
    assert not term.suspended(term.patience) and term.holds  # not waited for, still ours
    assert term.named_leader(term.patience) == ""
    term.renewed(term.patience + 0.1)  # etcd kept the lease after all: it resumes
    assert term.acting(term.patience + 0.2)


def test_a_term_ends_for_term_listeners_when_the_lease_is_lost_or_another_leads():
    term, _ = leading_term(now=0.0)
    ended = ended_counter(term)
    term.tick(1.9)  # suspended: not an end
    assert ended == []
    term.lease_lost(2.5)
    assert ended == [1] and not term.holds and not term.suspended(2.5)
    term.renewed(3.0)
    term.won(epoch=9, now=3.0)
    term.leader_seen("m2:7000", 12, now=3.1)
    assert ended == [1, 1]


def test_winning_a_new_epoch_ends_the_old_term():
    term, _ = leading_term(now=0.0)
    ended = ended_counter(term)
    term.won(epoch=9, now=0.1)
    assert ended == [1] and term.fence(0.1) == 9


def test_a_follower_is_never_suspended():
    term = Term("m2:7000", TTL)
    term.renewed(0.0)
    term.leader_seen("m1:7000", 7, now=0.0)
    assert not term.suspended(1.0) and term.named_leader(1.0) == "m1:7000"


# -- the gate: what the code that acts asks first ----------------------------


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gate_at(now: float):
    clock = Clock(now)
    term, _ = leading_term(now=0.0)
    term.tick(now)  # as the campaign does after each renewal, failed or not
    return Gate(term, clock), term, clock


def in_call(deadline: float | None, coro_fn):
    """Run coro_fn(call) as an API call with that deadline; (result, call)."""
    async def go():
        call = CallTerm(deadline)
        CALL.set(call)
        try:
            return await coro_fn(), call
        except XcpError as exc:
            return exc, call
    return asyncio.run(go())


def test_the_gate_passes_at_once_while_acting_and_marks_the_call():
    gate, _, clock = gate_at(0.1)
    epoch, call = in_call(5.0, gate.ready)
    assert epoch == 7 and call.acted


def test_the_gate_holds_a_call_through_a_suspension_and_lets_it_go_on_resuming():
    gate, term, clock = gate_at(TTL)  # suspended: no renewal confirmed for a whole lease

    async def go():
        waiting = asyncio.ensure_future(gate.ready())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        clock.now = TTL + 0.4
        term.renewed(TTL + 0.3)
        term.tick(clock.now)
        return await asyncio.wait_for(waiting, 1.0)
    epoch, call = in_call(10.0, go)
    assert epoch == 7 and call.acted


def test_the_gate_refuses_a_waiting_call_when_the_term_ends():
    gate, term, clock = gate_at(TTL)

    async def go():
        waiting = asyncio.ensure_future(gate.ready())
        await asyncio.sleep(0)
        term.lease_lost(clock.now)
        return await asyncio.wait_for(waiting, 1.0)
    refused, _ = in_call(10.0, go)
    assert isinstance(refused, XcpError) and refused.reason == "HOST_IS_SLAVE"


def test_the_gate_waits_no_longer_than_the_callers_deadline():
    gate, term, clock = gate_at(TTL)

    async def go():
        waiting = asyncio.ensure_future(gate.ready())
        await asyncio.sleep(0)
        clock.now = TTL + 0.5  # the call's deadline passed (woken by its timeout)
        return await asyncio.wait_for(waiting, 1.0)
    refused, _ = in_call(TTL + 0.01, go)
    assert isinstance(refused, XcpError) and refused.reason == "HOST_IS_SLAVE"


def test_outside_an_api_call_the_gate_does_not_wait():
    gate, _, _ = gate_at(TTL)

    async def go():
        with pytest.raises(XcpError):
            await gate.ready()
        with pytest.raises(XcpError):
            await gate.ready(0.0)
    asyncio.run(go())


# -- the campaign keeps its lease through failed renewals -------------------


class LostAnswer(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED


class ScriptedEtcd:
    """Grants, a winning campaign at revision 7, and keepalives answered as
    scripted ("ok", "fail": no answer, "gone": the lease is not known); each
    keepalive moves the fake clock on."""

    def __init__(self, clock: Clock, script: list[str]) -> None:
        self.clock, self.script, self.grants = clock, script, 0
        self.held = False  # a read of our masters key finds it on our lease

    async def grant(self, ttl, timeout=1.0):
        self.grants += 1
        return ec.rpc.LeaseGrantResponse(ID=self.grants, TTL=ttl)

    async def txn(self, compare, success, failure=(), timeout=1.0):
        reply = ec.rpc.TxnResponse(succeeded=True)
        reply.header.revision = 7
        return reply

    async def range(self, key, range_end=b"", **kwargs):
        reply = ec.rpc.RangeResponse()
        reply.header.revision = 6
        if self.held and key.startswith(Keys.of("/pool").masters):
            reply.kvs.add(key=key, lease=self.grants)
        return reply

    async def renew(self, lease, timeout=1.0):
        sent = self.clock.now
        self.clock.now += 0.05
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "fail":
            raise LostAnswer()
        if outcome == "hedged":  # answered by a hedge sent later than the main call
            self.clock.now += 0.05
            return ec.Answer(2, sent + 0.03, 1)
        return ec.Answer(0 if outcome == "gone" else 2, sent, -1)


class CampaignStore:
    def __init__(self, client) -> None:
        self.client, self.keys = client, Keys.of("/pool")

    def add_key_listener(self, prefix, listener) -> None:
        pass

    async def wait_revision(self, revision, timeout) -> bool:
        return True


def test_the_campaign_keeps_its_lease_past_its_ttl_until_etcd_says_it_is_gone():
    """Renewals failing for longer than the lease (etcd electing a new raft
    leader, which refreshes every lease): no new lease, no new campaign; the
    first renewal confirmed resumes the same epoch. etcd saying the lease is
    gone ends the term."""
    ttl = 0.08  # seconds on the fake clock; the campaign's own pauses are ttl/4 real
    clock = Clock()
    etcd = ScriptedEtcd(clock, ["ok", *["fail"] * 6, "ok", "ok"])
    term = Term("m1:7000", ttl)
    transitions: asyncio.Queue | None = None

    async def go():
        nonlocal transitions
        transitions = asyncio.Queue()
        term.add_listener(transitions.put_nowait)
        ended = asyncio.Event()
        term.add_term_listener(ended.set)
        task = asyncio.ensure_future(Campaign(term, CampaignStore(etcd), clock).run())
        try:
            assert await asyncio.wait_for(transitions.get(), 2) is True  # won, epoch 7
            assert await asyncio.wait_for(transitions.get(), 2) is False  # renewals fail
            assert clock.now < ttl + 0.1 and term.holds
            assert await asyncio.wait_for(transitions.get(), 2) is True  # resumed
            assert clock.now > ttl and term.fence(clock.now) == 7 and etcd.grants == 1
            assert not ended.is_set()
            etcd.script.append("gone")
            await asyncio.wait_for(ended.wait(), 2)
            assert not term.holds
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(go())


def test_a_hedged_renewal_counts_from_the_hedge_s_own_send_time():
    """A renewal the main channel did not answer but a hedge did: the lease
    counts from when the hedge was sent (its own send time, later than the
    main call's, earlier than its answer)."""
    clock = Clock()
    etcd = ScriptedEtcd(clock, ["hedged"])
    confirmed: list[float] = []

    class Spy(Term):
        def renewed(self, sent_at: float) -> None:
            confirmed.append(sent_at)
            super().renewed(sent_at)

    term = Spy("m1:7000", 0.08)  # the campaign's own pauses are ttl/4, real

    async def go():
        task = asyncio.ensure_future(Campaign(term, CampaignStore(etcd), clock).run())
        try:
            for _ in range(100):
                if len(confirmed) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(go())
    assert confirmed[:2] == [0.0, 0.03]  # the grant, then the hedge's send time


def test_a_member_saying_the_lease_is_gone_while_etcd_holds_it_is_not_believed():
    """One member answering a renewal with TTL 0 (a stale view) while a
    linearizable read finds our key on our lease: a failed renewal, not the
    end of the term."""
    clock = Clock()
    etcd = ScriptedEtcd(clock, ["ok", "gone", "ok"])
    etcd.held = True
    term = Term("m1:7000", 0.08)

    async def go():
        ended = asyncio.Event()
        term.add_term_listener(ended.set)
        task = asyncio.ensure_future(Campaign(term, CampaignStore(etcd), clock).run())
        try:
            for _ in range(100):
                if not etcd.script and term.acting(clock.now):
                    break
                await asyncio.sleep(0.01)
            assert not etcd.script and term.fence(clock.now) == 7
            assert not ended.is_set() and etcd.grants == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(go())
