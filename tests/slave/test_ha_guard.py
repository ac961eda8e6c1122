"""SelfFencing on a fake clock over the simulated hypervisor: the lease fed
from the stream, the gap after a SIGSTOP, the liveset rule, the fence."""

from __future__ import annotations

import asyncio

from xcp_control.lease import REJOIN_WINDOW
from xcp_control.slave.ha_guard import SelfFencing
from xcp_control.slave.hypervisor import SimulatedHypervisor
from xcp_control.slave.self_fence import HaConfig

HOST = "22222222-2222-4222-8222-222222222222"
PEERS = (("p1", "127.0.0.1:1"), ("p2", "127.0.0.1:2"))
GIB = 1 << 30


class Rig:
    def __init__(self, peers_answer=(0, 0)):
        self.now = 100.0
        self.connected = True
        self.peers_answer = peers_answer
        self.asked = 0
        self.rejoins = 0
        self.since = self.now  # when the stream last connected
        self.hv = SimulatedHypervisor(HOST, 8 * GIB)
        self.guard = SelfFencing(HOST, self.hv, lambda: self.since if self.connected else None,
                                 lambda: 1.5, self.ask, lambda: self.now, rejoin=self.rejoin)

    def rejoin(self) -> None:
        self.rejoins += 1
        self.rejoined_at = self.now

    async def tick_until(self, done, limit: float) -> float:
        """Tick until done() (at most `limit` seconds); the time it took."""
        start = self.now
        while not done():
            assert self.now - start <= limit, "not within the limit"
            await self.tick_for(0.25)
        return self.now - start

    def reconnect(self) -> None:
        self.connected, self.since = True, self.now

    async def ask(self, peers):
        self.asked += 1
        return self.peers_answer

    async def tick_for(self, seconds: float, step: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            await self.guard.check()


def run(body):
    asyncio.run(asyncio.wait_for(body(), 30))


def config(enabled=True, peers=PEERS) -> HaConfig:
    return HaConfig(enabled=True if enabled else False, fence_after=4.0, detect_bound=1.0,
                    peers=peers)


def test_a_healthy_stream_never_fences():
    async def body():
        rig = Rig()
        rig.guard.configure(config())
        await rig.hv.start("vm1", GIB, 1, False)
        await rig.tick_for(30)
        assert not rig.guard.fenced and rig.asked == 0
        assert [d.vm_uuid for d in await rig.hv.list_domains()] == ["vm1"]
    run(body)


def test_a_lost_stream_fences_within_the_lease_and_refuses_until_acknowledged():
    async def body():
        rig = Rig(peers_answer=(2, 1))  # peers reached, one still hears the leader
        rig.guard.configure(config())
        await rig.hv.start("vm1", GIB, 1, False)
        await rig.tick_for(1)
        rig.connected = False
        lost = rig.now
        await rig.tick_for(1.0)
        assert not rig.guard.fenced  # lease: 4 - 1.5 - 1 = 1.5 s after the last confirm
        await rig.tick_for(1.0)
        assert rig.guard.fenced and rig.now - lost <= 4.0
        assert await rig.hv.list_domains() == [] and rig.guard.fences == 1
        assert rig.guard.peer_status() == (False, 0.0) and rig.rejoins == 0
        rig.reconnect()  # the leader acknowledges us again
        await rig.tick_for(0.25)
        assert not rig.guard.fenced
    run(body)


def test_liveset_rule_keeps_domains_when_no_peer_hears_the_leader():
    async def body():
        rig = Rig(peers_answer=(2, 0))  # every peer reached, none hears the leader
        rig.guard.configure(config())
        await rig.hv.start("vm1", GIB, 1, False)
        rig.connected = False
        await rig.tick_for(20)
        assert not rig.guard.fenced and rig.asked >= 2
        assert len(await rig.hv.list_domains()) == 1
        rig.peers_answer = (1, 0)  # a minority reached: we may be the one cut off
        await rig.tick_for(5)
        assert rig.guard.fenced and await rig.hv.list_domains() == []
    run(body)


def test_no_peers_fences_and_ha_disabled_never_does():
    async def body():
        rig = Rig()
        rig.guard.configure(HaConfig(enabled=False, fence_after=4.0, detect_bound=1.0))
        await rig.hv.start("vm1", GIB, 1, False)
        rig.connected = False
        await rig.tick_for(30)
        assert not rig.guard.fenced and len(await rig.hv.list_domains()) == 1
        rig.connected = True
        await rig.tick_for(0.25)
        rig.guard.configure(config(peers=()))
        rig.connected = False
        await rig.tick_for(5)
        assert rig.guard.fenced and rig.asked == 0  # nobody to ask: the safe side
    run(body)


def test_a_resumed_slave_does_not_trust_its_stale_stream():
    """SIGSTOP for longer than the lease: on resume `connected` still says
    True, but the gap between ticks means the view is stale: fence at once."""
    async def body():
        rig = Rig(peers_answer=(2, 1))
        rig.guard.configure(config())
        await rig.hv.start("vm1", GIB, 1, False)
        await rig.tick_for(1)
        rig.now += 10.0  # stopped; the stream looks open to us when we wake
        await rig.guard.check()
        assert rig.guard.fenced and await rig.hv.list_domains() == []
        # Peers are told the stale flag: "I hear it" makes them fence, the safe side.
        assert rig.guard.peer_status()[0] is True
        # Still "connected" after the transport had time to notice: trusted again.
        await rig.tick_for(2.0)
        assert not rig.guard.fenced
    run(body)


def test_a_short_stop_does_not_fence_but_holds_confirms():
    async def body():
        rig = Rig(peers_answer=(2, 1))
        rig.guard.configure(config())
        await rig.tick_for(1)
        rig.now += 1.2  # a short stop, inside the 1.5 s lease
        await rig.guard.check()
        assert not rig.guard.fenced and rig.guard.peer_status()[0] is True
        await rig.tick_for(0.5)
        assert rig.guard.fenced  # no confirm for transport_bound: the lease ran out
    run(body)


async def held_rig() -> Rig:
    """A slave with one domain, holding it by the liveset rule for 10 s now
    (its stream is down and no peer hears the leader: the master tier is down)."""
    rig = Rig(peers_answer=(2, 0))
    rig.guard.configure(config())
    await rig.hv.start("vm1", GIB, 1, False)
    rig.connected = False
    await rig.tick_for(10)
    return rig


def test_a_held_lease_whose_peers_hear_the_leader_rejoins_before_fencing():
    async def body():
        rig = await held_rig()
        assert not rig.guard.fenced and rig.guard.lease.held
        rig.peers_answer = (2, 1)  # the master is back and a peer reconnected first
        await rig.tick_for(2.0)
        assert rig.rejoins == 1 and not rig.guard.fenced  # reconnecting, domains kept
        rig.reconnect()
        await rig.tick_for(REJOIN_WINDOW + 5)
        assert not rig.guard.fenced and len(await rig.hv.list_domains()) == 1
        assert not rig.guard.lease.held
    run(body)


def test_a_held_lease_not_acknowledged_within_the_rejoin_window_fences():
    async def body():
        rig = await held_rig()
        rig.peers_answer = (2, 1)
        await rig.tick_until(lambda: rig.rejoins, 1.5 + 0.25)  # one hold_extension on
        assert not rig.guard.fenced
        took = await rig.tick_until(lambda: rig.guard.fenced, REJOIN_WINDOW + 0.25)
        assert took >= REJOIN_WINDOW - 0.25 and await rig.hv.list_domains() == []
    run(body)


def test_peer_status_says_how_long_the_stream_has_been_up():
    rig = Rig()
    rig.since = rig.now - 42.0
    assert rig.guard.peer_status() == (True, 42.0)
    rig.connected = False
    assert rig.guard.peer_status() == (False, 0.0)


def test_the_liveset_question_ends_once_the_answers_decide_it():
    """A peer that never answers does not hold the verdict up."""
    from xcp_control.slave.ha_guard import ask_liveset

    async def body():
        never = asyncio.Event()

        def peers_saying(*answers):
            async def ask_one(uuid, address):
                answer = answers[int(uuid)]
                if answer == "silent":
                    await never.wait()
                return answer
            return [(str(i), "a") for i in range(len(answers))], ask_one

        # Keep: two of three reached, none hears; the third never answers.
        assert await ask_liveset(*peers_saying(False, "silent", False)) == (2, 0)
        # Fence: one hears the leader, whatever the others say later.
        reached, hearing = await ask_liveset(*peers_saying("silent", True, "silent"))
        assert hearing == 1
        # Fence: two of three unreachable, no majority can be reached any more.
        reached, hearing = await ask_liveset(*peers_saying(None, None, "silent"))
        assert (reached, hearing) == (0, 0)
    asyncio.run(asyncio.wait_for(body(), 5))


def test_ha_switched_on_after_a_gap_starts_the_lease_now_not_from_before():
    """Stopped while HA was off, resumed and told HA is on (a new stream's
    answer): within the hold after the gap, yet the lease starts now (the
    leader restarts it only after it acknowledged that generation); it does
    not fence at once by an acknowledgement from before the gap."""
    async def body():
        rig = Rig(peers_answer=(2, 1))
        rig.guard.configure(HaConfig(enabled=False, fence_after=4.0, detect_bound=1.0))
        await rig.hv.start("vm1", GIB, 1, False)
        await rig.tick_for(1)
        rig.now += 8.0  # SIGSTOPped
        await rig.guard.check()  # the gap: confirms held back
        rig.guard.configure(HaConfig(enabled=True, fence_after=4.0, detect_bound=1.0,
                                     peers=PEERS, generation=1))
        await rig.tick_for(1)
        assert not rig.guard.fenced and [d.vm_uuid for d in await rig.hv.list_domains()]
        # The same generation again within a hold is no fresh start.
        rig.connected = False
        rig.now += 8.0
        await rig.guard.check()
        rig.guard.configure(HaConfig(enabled=True, fence_after=4.0, detect_bound=1.0,
                                     peers=PEERS, generation=1))
        await rig.guard.check()
        assert rig.guard.fenced
    run(body)
