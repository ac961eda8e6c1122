"""Group commit (master/etcd_commits.py) against a fake etcd client: queued
jobs share one transaction, one in flight, a lone caller never waits on a free
slot, a free slot lingers (bounded) for the callers expected back, a refused
epoch fails every job of its transaction; the batching rule alone, its clock
given; a write whose answer was lost (etcd's raft leader died) is retried,
never applied twice, across a suspended term with its own epoch only."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xcp_control.errors import XcpError
from xcp_control.master import etcd_client as ec
from xcp_control.master.etcd_commits import MAX_TXN_OPS, Batching, GroupCommitter, Job


class FakeEtcd:
    """Answers each txn when the test releases it; remembers what it got."""

    def __init__(self, succeed: bool = True) -> None:
        self.txns: list[list] = []
        self.succeed = succeed
        self.gate = asyncio.Event()
        self.gate.set()
        self.revision = 10

    async def txn(self, compare, success, failure=(), timeout=1.0):
        self.txns.append(list(success))
        await self.gate.wait()
        self.revision += 1
        reply = ec.rpc.TxnResponse(succeeded=self.succeed)
        reply.header.revision = self.revision
        return reply


def job(key: str) -> Job:
    return Job([key.encode()], [ec.put_op(key.encode(), b"v")], 2)


def test_one_after_another_never_stalls_with_one_slot():
    async def go():
        etcd = FakeEtcd()
        writer = GroupCommitter(etcd, b"/leader", lambda: 7, in_flight=1)
        writer.start()
        try:
            for i in range(20):  # each waits for the previous: the slot must come back
                reply = await asyncio.wait_for(writer.submit(job(f"k{i}")), 2)
                assert reply.header.revision == 11 + i
        finally:
            await writer.close()
        return writer
    writer = asyncio.run(go())
    assert writer.commits == 20


def test_jobs_queued_meanwhile_share_the_next_transaction():
    async def go():
        etcd = FakeEtcd()
        etcd.gate.clear()
        applied = []
        writer = GroupCommitter(etcd, b"/leader", lambda: 7, in_flight=1,
                                on_applied=lambda reply, batch: applied.append(len(batch)))
        writer.start()
        try:
            first = asyncio.ensure_future(writer.submit(job("a")))
            while not etcd.txns:
                await asyncio.sleep(0)
            rest = [asyncio.ensure_future(writer.submit(job(f"b{i}"))) for i in range(9)]
            rest.append(asyncio.ensure_future(writer.submit(job("a"))))  # a key in flight
            for _ in range(10):
                await asyncio.sleep(0)
            etcd.gate.set()
            replies = await asyncio.wait_for(asyncio.gather(first, *rest), 2)
        finally:
            await writer.close()
        return etcd, applied, replies
    etcd, applied, replies = asyncio.run(go())
    assert [len(t) for t in etcd.txns] == [1, 10]  # the second carries all ten
    assert applied == [1, 10]
    assert {r.header.revision for r in replies[1:]} == {12}


def test_a_refused_epoch_fails_every_job_of_the_transaction():
    async def go():
        writer = GroupCommitter(FakeEtcd(succeed=False), b"/leader", lambda: 7)
        writer.start()
        try:
            results = await asyncio.gather(*(writer.submit(job(f"k{i}")) for i in range(5)),
                                           return_exceptions=True)
        finally:
            await writer.close()
        return results
    results = asyncio.run(go())
    assert all(isinstance(r, XcpError) and r.reason == "HOST_IS_SLAVE" for r in results)


def test_no_epoch_no_queue():
    async def go():
        def fence():
            raise XcpError("HOST_IS_SLAVE", master="")
        etcd = FakeEtcd()
        writer = GroupCommitter(etcd, b"/leader", fence)
        writer.start()
        try:
            with pytest.raises(XcpError):
                await writer.submit(job("k"))
        finally:
            await writer.close()
        return etcd
    assert asyncio.run(go()).txns == []


# -- the batching rule (pure: the clock is an argument) --------------------------

ONE = Batching(in_flight=1, second_after=MAX_TXN_OPS, linger=0.005)


def test_a_lone_caller_goes_at_once():
    assert ONE.next_send(flying=0, queued_jobs=1, queued_ops=1, expected=1, oldest=10.0,
                         now=10.0) == 10.0
    assert ONE.next_send(0, 1, 1, 0, 10.0, 10.0) == 10.0  # nothing out before: first write


def test_nothing_queued_or_no_free_slot_waits_for_a_change():
    assert ONE.next_send(0, 0, 0, 8, 10.0, 10.0) is None
    assert ONE.next_send(1, 7, 7, 8, 10.0, 10.0) is None


def test_a_free_slot_lingers_for_the_expected_callers_at_most_linger():
    assert ONE.next_send(0, 1, 1, 8, oldest=10.0, now=10.001) == pytest.approx(10.005)
    assert ONE.next_send(0, 7, 7, 8, oldest=10.0, now=10.004) == pytest.approx(10.005)
    assert ONE.next_send(0, 8, 8, 8, oldest=10.0, now=10.001) == 10.001  # all back: go
    assert ONE.next_send(0, 3, 3, 8, oldest=10.0, now=10.005) == 10.005  # linger over
    assert ONE.next_send(0, 3, 3, 8, oldest=10.0, now=11.0) == 11.0


def test_a_full_transaction_goes_without_lingering():
    assert ONE.next_send(0, 2, MAX_TXN_OPS, 200, oldest=10.0, now=10.0) == 10.0


def test_no_linger_sends_at_once():
    eager = Batching(in_flight=1, second_after=MAX_TXN_OPS, linger=0.0)
    assert eager.next_send(0, 1, 1, 8, oldest=10.0, now=10.0) == 10.0


def test_a_second_slot_takes_its_share_or_a_full_transaction():
    two = Batching(in_flight=2, second_after=MAX_TXN_OPS, linger=0.005)
    assert two.next_send(1, 3, 3, 8, 10.0, 10.0) is None  # waits for the one in flight
    assert two.next_send(1, 4, 4, 8, 10.0, 10.0) == 10.0  # half of 8
    assert two.next_send(1, 1, MAX_TXN_OPS, 8, 10.0, 10.0) == 10.0
    assert two.next_send(0, 3, 3, 8, 10.0, 10.001) == pytest.approx(10.005)
    assert two.next_send(2, 9, 9, 8, 10.0, 10.0) is None


# -- the committer lingering (the loop's own timer is never reached) --------------


async def _until(predicate) -> None:
    for _ in range(1000):  # bounded: yields to the loop, no sleeping
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def lingering(etcd: FakeEtcd, linger: float, now: list[float], **batching) -> GroupCommitter:
    """One slot, a linger of `linger` seconds, the clock read from now[0]."""
    return GroupCommitter(etcd, b"/leader", lambda: 7,
                          batching=Batching(1, MAX_TXN_OPS, linger=linger, **batching),
                          clock=lambda: now[0])


def test_callers_coming_back_share_one_transaction_again():
    async def go():
        etcd = FakeEtcd()
        now = [0.0]
        writer = lingering(etcd, 10.0, now)
        writer.start()
        try:
            # Three callers at once: one transaction of three.
            await asyncio.gather(*(writer.submit(job(f"a{i}")) for i in range(3)))
            # They come back one by one: the first two wait for the third.
            back = [asyncio.ensure_future(writer.submit(job("b0"))),
                    asyncio.ensure_future(writer.submit(job("b1")))]
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(etcd.txns) == 1
            back.append(asyncio.ensure_future(writer.submit(job("b2"))))
            await asyncio.wait_for(asyncio.gather(*back), 2)
        finally:
            await writer.close()
        return etcd
    etcd = asyncio.run(go())
    assert [len(t) for t in etcd.txns] == [3, 3]


def test_a_caller_that_does_not_come_back_delays_the_others_at_most_linger():
    async def go():
        etcd = FakeEtcd()
        now = [0.0]
        writer = lingering(etcd, 0.005, now)
        writer.start()

        async def two_come_back(at: float, linger_expected: bool) -> None:
            now[0] = at
            back = [asyncio.ensure_future(writer.submit(job(f"{at}-{i}"))) for i in range(2)]
            await _until(lambda: not writer._queue or len(writer._queue) == 2)
            for _ in range(20):
                await asyncio.sleep(0)
            sent = len(etcd.txns)
            if linger_expected:
                now[0] = at + 0.006  # past the linger; the wake stands for the loop's timer
                writer._wake.set()
            await asyncio.wait_for(asyncio.gather(*back), 2)
            return sent
        try:
            await asyncio.gather(*(writer.submit(job(f"a{i}")) for i in range(3)))
            lingered = [await two_come_back(1.0, True), await two_come_back(2.0, True)]
            at_once = await two_come_back(3.0, False)  # out: 2 and 2 the last two times
        finally:
            await writer.close()
        return etcd, lingered, at_once
    etcd, lingered, at_once = asyncio.run(go())
    assert lingered == [1, 2]  # each time nothing left before the linger was over
    assert at_once == 4
    assert [len(t) for t in etcd.txns] == [3, 2, 2, 2]


def test_one_object_keeps_its_order_while_lingering():
    async def go():
        etcd = FakeEtcd()
        etcd.gate.clear()
        writer = GroupCommitter(etcd, b"/leader", lambda: 7,
                                batching=Batching(1, MAX_TXN_OPS, linger=10.0))
        writer.start()
        try:
            first = asyncio.ensure_future(writer.submit(job("k")))
            await _until(lambda: etcd.txns)
            again = asyncio.ensure_future(writer.submit(job("k")))  # same key: waits
            other = asyncio.ensure_future(writer.submit(job("x")))
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(etcd.txns) == 1
            etcd.gate.set()
            replies = await asyncio.wait_for(asyncio.gather(first, again, other), 2)
        finally:
            await writer.close()
        return etcd, replies
    etcd, replies = asyncio.run(go())
    assert replies[0].header.revision < replies[1].header.revision
    assert [len(t) for t in etcd.txns] == [1, 2]


def test_the_linger_may_count_from_the_slots_freeing():
    late = Batching(1, MAX_TXN_OPS, linger=0.005, from_free=True)
    # Queued at 10.0 while the slot was busy until 10.004: waits until 10.009.
    assert late.next_send(0, 1, 1, 8, oldest=10.0, now=10.004,
                          free_since=10.004) == pytest.approx(10.009)
    assert ONE.next_send(0, 1, 1, 8, oldest=10.0, now=10.004,
                         free_since=10.004) == pytest.approx(10.005)
    assert late.next_send(0, 1, 1, 8, oldest=10.006, now=10.006,
                          free_since=10.004) == pytest.approx(10.011)


def test_a_job_queued_during_a_transaction_lingers_from_its_answer():
    async def go():
        etcd = FakeEtcd()
        now = [0.0]
        writer = lingering(etcd, 0.005, now, from_free=True)
        writer.start()
        try:
            await asyncio.gather(*(writer.submit(job(f"a{i}")) for i in range(3)))
            etcd.gate.clear()
            flying = [asyncio.ensure_future(writer.submit(job(f"b{i}"))) for i in range(3)]
            await _until(lambda: len(etcd.txns) == 2)
            now[0] = 1.0
            early = asyncio.ensure_future(writer.submit(job("c0")))  # queued at 1.0
            await _until(lambda: writer._queue)
            now[0] = 1.010  # etcd answers 10 ms later: the linger starts there
            etcd.gate.set()
            await asyncio.wait_for(asyncio.gather(*flying), 2)
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(etcd.txns) == 2  # c0 waits for the others
            rest = [asyncio.ensure_future(writer.submit(job(f"c{i}"))) for i in (1, 2)]
            await asyncio.wait_for(asyncio.gather(early, *rest), 2)
        finally:
            await writer.close()
        return etcd
    etcd = asyncio.run(go())
    assert [len(t) for t in etcd.txns] == [3, 3, 3]


# -- retries across etcd's raft leader lost ---------------------------------


class Unanswered(grpc.RpcError):
    """What a request in flight to a dying etcd raft leader ends with."""

    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED


class MiniEtcd:
    """Keys with their revisions, the two compares the committer uses, and
    faults: `lose` answers the next txns with Unanswered after applying them
    (True) or without (False)."""

    def __init__(self, epoch: int = 7) -> None:
        self.revision = 20
        self.kvs: dict[bytes, tuple[bytes, int, int]] = {b"/leader": (b"m1", epoch, epoch)}
        self.lose: list[bool] = []
        self.applied = 0

    def _holds(self, c) -> bool:
        value, create, mod = self.kvs.get(c.key, (b"", 0, 0))
        if c.target == ec.Compare.CREATE:
            return create == c.create_revision
        assert c.target == ec.Compare.MOD and c.result == ec.Compare.LESS
        return mod < c.mod_revision

    async def txn(self, compare, success, failure=(), timeout=1.0):
        ok = all(self._holds(c) for c in compare)
        reply = ec.rpc.TxnResponse(succeeded=ok)
        if ok:
            self.revision += 1
            self.applied += 1
            for op in success:
                put = op.request_put
                create = self.kvs.get(put.key, (b"", self.revision, 0))[1]
                self.kvs[put.key] = (put.value, create, self.revision)
                reply.responses.add().response_put.SetInParent()
        else:
            for op in failure:
                value, create, mod = self.kvs[op.request_range.key]
                kv = reply.responses.add().response_range.kvs.add()
                kv.key, kv.value = op.request_range.key, value
                kv.create_revision, kv.mod_revision = create, mod
        reply.header.revision = self.revision
        if self.lose:
            if not self.lose.pop(0):
                self.undo(success, ok)
            raise Unanswered()
        return reply

    def undo(self, success, ok: bool) -> None:
        if ok:  # simpler than not applying: forget it was
            self.revision -= 1
            self.applied -= 1
            for op in success:
                self.kvs.pop(op.request_put.key)


def test_an_unanswered_write_that_etcd_applied_is_not_applied_again():
    async def go():
        etcd = MiniEtcd()
        writer = GroupCommitter(etcd, b"/leader", lambda: 7)
        writer.start()
        try:
            etcd.lose = [True]  # applied, then the answer lost with the raft leader
            reply = await asyncio.wait_for(writer.submit(job("vm1")), 5)
        finally:
            await writer.close()
        return etcd, writer, reply
    etcd, writer, reply = asyncio.run(go())
    assert etcd.applied == 1 and etcd.kvs[b"vm1"][2] == 21  # one revision, one event
    assert reply.succeeded and reply.header.revision == 21  # answered as applied then
    assert writer.recovered == 1


def test_an_unanswered_write_that_etcd_did_not_apply_is_applied_by_the_retry():
    async def go():
        etcd = MiniEtcd()
        writer = GroupCommitter(etcd, b"/leader", lambda: 7)
        writer.start()
        try:
            etcd.lose = [False, False]
            reply = await asyncio.wait_for(writer.submit(job("vm1")), 5)
        finally:
            await writer.close()
        return etcd, writer, reply
    etcd, writer, reply = asyncio.run(go())
    assert etcd.applied == 1 and reply.header.revision == 21 and writer.recovered == 0


def test_a_retry_waits_for_a_suspended_term_and_keeps_its_epoch():
    async def go():
        etcd = MiniEtcd()
        resumed = asyncio.Event()
        asked: list[float | None] = []

        async def ready(budget):
            asked.append(budget)
            if len(asked) > 2:  # the retry: the term is suspended until resumed
                await resumed.wait()
            return 7
        writer = GroupCommitter(etcd, b"/leader", lambda: 7, ready=ready)
        writer.start()
        try:
            etcd.lose = [False]
            pending = asyncio.ensure_future(writer.submit(job("vm1")))
            while len(asked) < 3:
                await asyncio.sleep(0)
            assert not pending.done() and etcd.applied == 0
            resumed.set()
            reply = await asyncio.wait_for(pending, 5)
        finally:
            await writer.close()
        return etcd, asked, reply
    etcd, asked, reply = asyncio.run(go())
    assert asked[0] is None  # submit: the API caller's own deadline
    assert all(0 < b <= 5.0 for b in asked[1:])  # the committer's: its write budget
    assert etcd.applied == 1 and reply.succeeded


def test_a_retry_under_another_epoch_fails_rather_than_write_for_the_old_term():
    async def go():
        etcd = MiniEtcd()
        epochs = iter([7, 7, 9])

        async def ready(budget):
            return next(epochs)
        writer = GroupCommitter(etcd, b"/leader", lambda: 7, ready=ready)
        writer.start()
        try:
            etcd.lose = [False]
            with pytest.raises(XcpError) as refused:
                await asyncio.wait_for(writer.submit(job("vm1")), 5)
        finally:
            await writer.close()
        return etcd, refused.value
    etcd, refused = asyncio.run(go())
    assert refused.reason == "HOST_IS_SLAVE" and etcd.applied == 0
