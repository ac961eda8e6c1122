"""The hedged lease renewal (etcd_client.first_answer) and the main channel's
preference order, without etcd: calls are futures the test answers, the
clock is a fake one, nothing sleeps."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xcp_control.master import etcd_client as ec


class Unanswered(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """Each call made is a future the test answers; the clock moves 1 s per call."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.made = clock, []

    def call(self, name: str):
        async def run():
            future = asyncio.get_running_loop().create_future()
            self.made.append((name, future))
            return await future
        return run

    def future(self, name: str) -> asyncio.Future:
        return next(f for n, f in self.made if n == name)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def start(calls: Calls, hedge_after: float, failed: list | None = None):
    def clocked(name):
        inner = calls.call(name)

        def call():
            calls.clock.now += 1.0  # each call is sent a second after the one before
            return inner()
        return call
    return asyncio.ensure_future(ec.first_answer(
        clocked("main"), [clocked("h0"), clocked("h1")], hedge_after, calls.clock,
        main_failed=None if failed is None else failed.append))


def test_an_answer_in_time_sends_no_hedge():
    async def go():
        calls = Calls(Clock())
        task = start(calls, hedge_after=60.0)
        await settle()
        calls.future("main").set_result(2)
        answer = await task
        assert (answer.value, answer.sent_at, answer.by) == (2, 10.0, -1)
        assert [n for n, _ in calls.made] == ["main"]
    asyncio.run(go())


def test_a_late_main_call_is_hedged_and_the_first_answer_counts_from_its_own_send_time():
    async def go():
        calls, failed = Calls(Clock()), []
        task = start(calls, hedge_after=0.0, failed=failed)
        await settle()
        assert [n for n, _ in calls.made] == ["main", "h0", "h1"]
        calls.future("h1").set_result(2)
        answer = await task
        assert (answer.value, answer.sent_at, answer.by) == (2, 12.0, 1)
        await settle()
        assert calls.future("h0").cancelled()  # the other hedge is called off
        assert not calls.future("main").done() and failed == []  # the main one goes on
        calls.future("main").set_exception(Unanswered())
        await settle()
        assert failed == [1]  # then fails: the member that answered is preferred
    asyncio.run(go())


def test_a_main_call_answering_late_is_not_a_failure():
    async def go():
        calls, failed = Calls(Clock()), []
        task = start(calls, hedge_after=0.0, failed=failed)
        await settle()
        calls.future("h0").set_result(2)
        await task
        calls.future("main").set_result(2)
        await settle()
        assert failed == []
    asyncio.run(go())


def test_a_main_call_failing_at_once_is_hedged_at_once():
    async def go():
        calls, failed = Calls(Clock()), []
        task = start(calls, hedge_after=60.0, failed=failed)
        await settle()
        calls.future("main").set_exception(Unanswered())
        await settle()
        assert [n for n, _ in calls.made] == ["main", "h0", "h1"]
        calls.future("h0").set_result(2)
        answer = await task
        await settle()
        assert answer.by == 0 and failed == [0]
    asyncio.run(go())


def test_every_call_failing_raises_the_last_error():
    async def go():
        calls = Calls(Clock())
        task = start(calls, hedge_after=0.0, failed=[])
        await settle()
        for name in ("main", "h0", "h1"):
            calls.future(name).set_exception(Unanswered())
        with pytest.raises(grpc.RpcError):
            await task
    asyncio.run(go())


def test_a_cancelled_renewal_calls_its_hedges_off():
    async def go():
        calls = Calls(Clock())
        task = start(calls, hedge_after=0.0, failed=[])
        await settle()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await settle()
        assert calls.future("h0").cancelled() and calls.future("h1").cancelled()
    asyncio.run(go())


def test_the_preferred_member_goes_first_the_others_keep_their_order():
    target = "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
    assert ec.target_members(target) == ("ipv4", ["127.0.0.1:1", "127.0.0.1:2",
                                                  "127.0.0.1:3"])
    assert ec.preferring(target, "127.0.0.1:3") == "ipv4:127.0.0.1:3,127.0.0.1:1,127.0.0.1:2"
    assert ec.preferring(target, "127.0.0.1:1") == target


def test_the_main_channel_is_rebuilt_preferring_a_member_at_most_every_few_seconds():
    async def go():
        clock = Clock()
        client = ec.EtcdClient("http://127.0.0.1:1,http://127.0.0.1:2", clock=clock)
        try:
            assert client.prefer("127.0.0.1:2")
            assert client.channel_target == "ipv4:127.0.0.1:2,127.0.0.1:1"
            clock.now += ec.PREFER_EVERY / 2
            assert not client.prefer("127.0.0.1:1")
            clock.now += ec.PREFER_EVERY
            assert client.prefer("127.0.0.1:1") and client.reconnects == 2
            assert client.channel_target == "ipv4:127.0.0.1:1,127.0.0.1:2"
        finally:
            await client.close()
    asyncio.run(go())
