"""Heartbeat client pieces that need no network: Backoff, the beat schedule,
the beat composer, the domain-list cache. No sleeping."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from tests.support.fakes import aio_rpc_error

from xcp.v1 import liveness_service_pb2 as pb
from xcp_control.slave.backoff import (BUSY_BACKOFF_CAP, Backoff, Reconnect, TurnedAway,
                                       hello_timeout, turned_away)
from xcp_control.slave.heartbeat import HeartbeatClient
from xcp_control.slave.reports import BeatComposer, DomainSnapshot, HostIdentity, next_tick
from xcp_control.slave.hypervisor import PAUSED, RUNNING, DomainInfo, SimulatedHypervisor

HOST = HostIdentity("11111111-1111-4111-8111-111111111111", "h1", "127.0.0.1:5000")
VM1 = "aaaaaaaa-0000-4000-8000-000000000001"
VM2 = "aaaaaaaa-0000-4000-8000-000000000002"
EMPTY = DomainSnapshot.of([])
ONE = DomainSnapshot.of([DomainInfo(VM1, RUNNING, 1024, 1)])
TWO = DomainSnapshot.of([DomainInfo(VM1, RUNNING, 1024, 1), DomainInfo(VM2, PAUSED, 2048, 2)])


# -- Backoff -----------------------------------------------------------------


def test_backoff_stays_within_zero_and_cap():
    backoff = Backoff(base=0.1, cap=1.0, rng=random.Random(42))
    delays = [backoff.next_delay() for _ in range(1000)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    assert max(delays) > 0.9  # jitter reaches up to the cap once there
    assert len(set(delays)) > 900  # full jitter, not a fixed ladder


def test_backoff_ceiling_grows_then_caps_then_resets():
    backoff = Backoff(base=0.1, cap=1.0, rng=random.Random(7))
    ceilings = []
    for _ in range(7):
        ceilings.append(backoff.ceiling)
        assert 0.0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    backoff.reset()
    assert backoff.ceiling == pytest.approx(0.1)
    assert backoff.next_delay() <= 0.1


def test_backoff_is_deterministic_with_a_seeded_rng():
    a = Backoff(0.1, 1.0, random.Random(3))
    b = Backoff(0.1, 1.0, random.Random(3))
    assert [a.next_delay() for _ in range(20)] == [b.next_delay() for _ in range(20)]


def test_backoff_survives_very_many_attempts():
    backoff = Backoff(0.1, 0.5, random.Random(1))
    for _ in range(10_000):
        assert backoff.next_delay() <= 0.5


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.1, 0)


# -- Reconnect: unreachable vs turned away ---------------------------------------


def ceilings(policy: Reconnect, busy: bool, n: int) -> list[float]:
    """The largest of many draws at each of n consecutive failures (each draw
    is one failure: the ceiling grows as the failures add up)."""
    return [policy.after_failure(busy) for _ in range(n)]


def test_an_unreachable_master_is_retried_within_the_cap_however_long_it_is_away():
    policy = Reconnect(cap=1.0, rng=random.Random(5))
    assert max(ceilings(policy, busy=False, n=1000)) <= 1.0


def test_a_master_that_turns_us_away_gets_growing_room_up_to_the_busy_cap():
    policy = Reconnect(cap=1.0, rng=random.Random(5))
    delays = ceilings(policy, busy=True, n=2000)
    assert max(delays[:1]) <= 1.0 and max(delays[:3]) <= 4.0  # 1, 2, 4 s ceilings first
    assert max(delays) <= BUSY_BACKOFF_CAP
    assert max(delays[-1000:]) > 0.9 * BUSY_BACKOFF_CAP  # it does reach the busy cap
    # Being unreachable in between does not undo the room the master asked for...
    policy.after_failure(busy=False)
    assert max(ceilings(policy, busy=True, n=200)) > 0.9 * BUSY_BACKOFF_CAP
    # ... and a welcome resets both.
    policy.welcomed()
    assert policy.after_failure(busy=True) <= 1.0
    assert policy.after_failure(busy=False) <= 0.1


def test_turned_away_means_unanswered_hello_or_shed_stream_only():
    assert turned_away(TurnedAway("no reply to Hello"))
    assert turned_away(aio_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert not turned_away(aio_rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert not turned_away(TimeoutError("write timed out"))
    assert not turned_away(ConnectionError("reset"))


def test_hello_timeout_leaves_a_slow_master_room():
    assert hello_timeout(1.0) == 5.0 and hello_timeout(0.1) == 2.0


# -- schedule ----------------------------------------------------------------


def test_next_tick_keeps_the_grid_despite_late_wakeups():
    due = 10.0
    for late in (0.03, 0.07, 0.01, 0.09):
        due = next_tick(due, 0.2, now=due + late)
    assert due == pytest.approx(10.8)  # no drift from the late wake-ups


def test_next_tick_skips_missed_beats_instead_of_bursting():
    assert next_tick(10.0, 1.0, now=13.5) == pytest.approx(14.0)
    assert next_tick(10.0, 1.0, now=11.0) == pytest.approx(12.0)
    assert next_tick(10.0, 1.0, now=10.2) == pytest.approx(11.0)


# -- composer ----------------------------------------------------------------


def hello(composer: BeatComposer, snapshot: DomainSnapshot = EMPTY) -> pb.Hello:
    return composer.hello(HOST, memory_total=1 << 30, memory_free=1 << 29, enabled=True,
                          snapshot=snapshot).hello


def test_hello_carries_identity_memory_and_full_list():
    h = hello(BeatComposer(), TWO)
    assert (h.host_uuid, h.name_label, h.address) == (HOST.uuid, "h1", "127.0.0.1:5000")
    assert (h.memory_total, h.memory_free, h.enabled) == (1 << 30, 1 << 29, True)
    assert [d.vm_uuid for d in h.domains] == [VM1, VM2]
    assert h.domains_digest == TWO.digest


def test_steady_beats_are_small_and_digest_only():
    composer = BeatComposer()
    hello(composer)
    composer.on_response(pb.HeartbeatResponse(interval_ms=1000, domains_ack=EMPTY.digest))
    for seq in (1, 2, 3):
        beat = composer.beat(123, EMPTY).beat
        assert (beat.seq, beat.memory_free, beat.domains_digest) == (seq, 123, EMPTY.digest)
        assert not beat.domains_included and not beat.domains
        assert pb.HeartbeatRequest(beat=beat).ByteSize() < 48


def test_full_list_sent_once_after_a_change():
    composer = BeatComposer()
    hello(composer)
    assert not composer.beat(1, EMPTY).beat.domains_included
    changed = composer.beat(1, ONE).beat
    assert changed.domains_included and [d.vm_uuid for d in changed.domains] == [VM1]
    # Before and after the master acknowledges it: digest only.
    assert not composer.beat(1, ONE).beat.domains_included
    composer.on_response(pb.HeartbeatResponse(domains_ack=ONE.digest))
    assert not composer.beat(1, ONE).beat.domains_included


def test_empty_list_is_sent_when_the_last_domain_goes():
    composer = BeatComposer()
    hello(composer, ONE)
    beat = composer.beat(1, EMPTY).beat
    assert beat.domains_included and len(beat.domains) == 0
    assert beat.domains_digest == EMPTY.digest


def test_full_list_resent_when_ack_differs():
    composer = BeatComposer()
    hello(composer, ONE)
    composer.on_response(pb.HeartbeatResponse(domains_ack=TWO.digest))  # master holds another
    assert composer.beat(1, ONE).beat.domains_included
    assert not composer.beat(1, ONE).beat.domains_included


def test_full_list_resent_when_master_asks():
    composer = BeatComposer()
    hello(composer, ONE)
    composer.on_response(pb.HeartbeatResponse(send_domains=True))
    beat = composer.beat(1, ONE).beat
    assert beat.domains_included and len(beat.domains) == 1
    assert not composer.beat(1, ONE).beat.domains_included


def test_empty_ack_is_no_statement():
    composer = BeatComposer()
    hello(composer, ONE)
    composer.on_response(pb.HeartbeatResponse(interval_ms=200))
    assert not composer.beat(1, ONE).beat.domains_included


def test_seq_restarts_with_each_stream():
    first = BeatComposer()
    hello(first)
    assert [first.beat(0, EMPTY).beat.seq for _ in range(3)] == [1, 2, 3]
    second = BeatComposer()
    hello(second)
    assert second.beat(0, EMPTY).beat.seq == 1


# -- client, without a stream ------------------------------------------------------


def test_client_rereads_domains_only_after_a_change():
    async def go():
        hv = SimulatedHypervisor(HOST.uuid, 1 << 30)
        reads = 0
        real_list = hv.list_domains

        async def counting_list():
            nonlocal reads
            reads += 1
            return await real_list()

        hv.list_domains = counting_list  # type: ignore[method-assign]
        client = HeartbeatClient("127.0.0.1:1", HOST, hv)
        assert (await client._current_domains()).digest == EMPTY.digest
        await client._current_domains()
        assert reads == 1
        await hv.start(VM1, 1024, 1)
        assert (await client._current_domains()).digest == ONE.digest
        await client._current_domains()
        assert reads == 2
    asyncio.run(go())


def test_stop_before_run_returns_at_once():
    async def go():
        client = HeartbeatClient("127.0.0.1:1", HOST, SimulatedHypervisor(HOST.uuid, 1 << 30))
        await client.stop("test")
        await client.run()  # sees the stop and ends without connecting
        assert client.sessions == 0 and not client.connected
    asyncio.run(go())


def test_retry_now_skips_the_backoff_and_connected_since_follows_the_stream():
    """HA's rejoin (ha_guard.py): a slave whose held lease ended must not sit
    out a long backoff. The backoff here is minutes; retry_now() ends it."""
    async def body():
        hv = SimulatedHypervisor("22222222-2222-4222-8222-222222222222", 1 << 30)
        clock = [50.0]
        client = HeartbeatClient("127.0.0.1:1", HostIdentity(hv.host_uuid, "h", "a:1"), hv,
                                 reconnect=Reconnect(cap=600.0, busy_cap=600.0,
                                                     rng=random.Random(7)),
                                 clock=lambda: clock[0])
        attempts = asyncio.Queue()

        async def session():
            client.connected = True  # as a welcome does
            assert client.connected_since == 50.0
            await attempts.put(client.connected_since)
            raise TurnedAway("scripted")

        client._session = session
        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(attempts.get(), 5)
        assert not client.connected and client.connected_since is None
        client.retry_now()
        await asyncio.wait_for(attempts.get(), 5)  # not after minutes of backoff
        await client.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    asyncio.run(body())
