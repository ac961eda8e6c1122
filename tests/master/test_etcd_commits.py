"""Group commit (master/etcd_commits.py) against a fake etcd client: queued
jobs share one transaction, one in flight, a job never waits on a free slot,
a refused epoch fails every job of its transaction."""

from __future__ import annotations

import asyncio

import pytest

from xcp_control.errors import XcpError
from xcp_control.master import etcd_client as ec
from xcp_control.master.etcd_commits import GroupCommitter, Job


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
