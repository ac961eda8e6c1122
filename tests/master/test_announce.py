"""A new leader calls its hosts over (master/announce.py): bounded fan-out,
hosts already streaming skipped, failures counted, a round cancelled when the
leader stops acting."""

from __future__ import annotations

import asyncio

from xcp_control import errors
from xcp_control.master.announce import LeaderAnnouncer


class Hosts:
    """Fake slaves: records the calls, at most how many ran at once."""

    def __init__(self, count: int, streaming=(), failing=(), gate: asyncio.Event | None = None):
        self.names = [f"h{i}" for i in range(count)]
        self.streaming = set(streaming)
        self.failing = set(failing)
        self.gate = gate
        self.called: list[str] = []
        self.running = self.most = 0

    async def call(self, host: str) -> bool:
        self.called.append(host)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if host in self.failing:
                raise errors.cannot_contact_host(host)
            self.streaming.add(host)  # it comes over
            return True
        finally:
            self.running -= 1


async def settle() -> None:
    """Let every ready task run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def announcer(hosts: Hosts, concurrency: int = 8) -> LeaderAnnouncer:
    return LeaderAnnouncer(lambda: hosts.names, hosts.streaming.__contains__, hosts.call,
                           concurrency=concurrency)


def test_every_host_not_yet_streaming_is_called_once_with_bounded_concurrency():
    async def go():
        hosts = Hosts(200, streaming={"h0", "h1"}, failing={"h7"})
        a = announcer(hosts, concurrency=8)
        a.start()
        await a.wait()
        return hosts, a
    hosts, a = asyncio.run(go())
    assert sorted(hosts.called) == sorted(h for h in hosts.names if h not in ("h0", "h1"))
    assert 1 < hosts.most <= 8
    assert a.rounds == 1 and a.last == (198, 197, 1)


def test_a_host_that_connected_by_itself_meanwhile_is_skipped():
    async def go():
        hosts = Hosts(10)
        a = announcer(hosts, concurrency=1)

        async def slow(host: str) -> bool:
            hosts.streaming.update(hosts.names)  # everyone else arrives meanwhile
            return await hosts.call(host)
        a._call = slow
        a.start()
        await a.wait()
        return hosts
    assert asyncio.run(go()).called == ["h0"]


def test_stopping_cancels_the_round_and_a_new_start_replaces_it():
    async def go():
        gate = asyncio.Event()
        hosts = Hosts(50, gate=gate)
        a = announcer(hosts, concurrency=4)
        a.start()
        await settle()
        assert hosts.running == 4  # four in flight, waiting on the gate
        a.stop()
        await settle()
        stopped_after = len(hosts.called)
        gate.set()
        a.start()  # the next term calls again
        await a.wait()
        return hosts, stopped_after, a
    hosts, stopped_after, a = asyncio.run(go())
    assert stopped_after == 4
    assert a.rounds == 1 and set(hosts.called) == set(hosts.names)


def test_nothing_to_do_when_every_host_streams_already():
    async def go():
        hosts = Hosts(5, streaming={f"h{i}" for i in range(5)})
        a = announcer(hosts)
        a.start()
        await a.wait()
        return hosts, a
    hosts, a = asyncio.run(go())
    assert hosts.called == [] and a.last == (0, 0, 0)
