"""The liveness timing edges of issue 10, on a fake clock: the report backstop,
hosts restored at start-up that never come back, the PING timeout derived from
dead_after, and the settings refused at start-up. No test here sleeps."""

from __future__ import annotations

import pytest

from tests.master.world import NOW, World, new_uuid, run
from xcp_control.master.host_metrics import MetricsMirror
from xcp_control.master.liveness import Liveness
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.settings import MasterSettings, SettingsError
from xcp.v1 import liveness_service_pb2 as pb

REPORT_DEADLINE = 30.0  # 3 x the default report_interval
GRACE = 3.0
A, B = "host-a", "host-b"


def make(started_at: float = 100.0) -> tuple[Liveness, list]:
    flips: list[tuple[str, bool]] = []
    liveness = Liveness(REPORT_DEADLINE, GRACE, started_at)
    liveness.add_listener(lambda host, live: flips.append((host, live)))
    return liveness, flips


# -- the report backstop -----------------------------------------------------------


def test_a_host_whose_reports_stop_is_live_until_the_report_deadline():
    """Its transport answers PINGs (so its stream stays open): only the backstop
    can judge it, exactly 3 x report_interval after its last report."""
    liveness, flips = make()
    liveness.attach(A)
    liveness.beat(A, 110.0)
    assert liveness.reap(110.0 + REPORT_DEADLINE) == []
    assert liveness.is_live(A)
    assert liveness.reap(110.0 + REPORT_DEADLINE + 0.001) == [A]
    assert flips == [(A, True), (A, False)]


def test_each_report_restarts_the_backstop():
    liveness, _ = make()
    for t in (110.0, 120.0, 130.0, 140.0):
        liveness.beat(A, t)
        assert liveness.reap(t + REPORT_DEADLINE - 0.5) == []
    assert liveness.reap(140.0 + REPORT_DEADLINE + 0.001) == [A]


def test_a_stream_that_ends_is_not_live_at_once_whatever_the_backstop():
    """A PING unanswered closes the transport: the stream's end is the verdict."""
    liveness, _ = make()
    stream = liveness.attach(A)
    liveness.beat(A, 110.0)
    assert liveness.detach(A, stream)
    assert not liveness.is_live(A)
    assert liveness.reap(110.0 + REPORT_DEADLINE + 1) == []  # nothing left to judge


# -- master start-up -------------------------------------------------------------------


def test_a_restored_host_that_never_says_hello_is_not_live_when_the_grace_ends():
    """Not report_deadline later: the stored flag is only trusted for the grace."""
    liveness, flips = make(started_at=100.0)
    liveness.restore([(A, True), (B, True)], 100.0)
    liveness.beat(B, 101.0)  # B reconnected
    assert liveness.reap(100.0 + GRACE - 0.01) == []
    assert liveness.reap(100.0 + GRACE) == [A]
    assert liveness.is_live(B)
    assert flips == [(A, False)]  # B was live already: its Hello is no flip


def test_a_restored_host_back_within_the_grace_is_judged_by_its_reports():
    liveness, _ = make(started_at=100.0)
    liveness.restore([(A, True)], 100.0)
    liveness.beat(A, 102.0)
    assert liveness.reap(102.0 + REPORT_DEADLINE) == []
    assert liveness.reap(102.0 + REPORT_DEADLINE + 0.001) == [A]


# -- settings: the PING timeout and the combination, checked at start-up -------------


def test_ping_timeout_is_what_dead_after_leaves_after_one_interval():
    s = MasterSettings().validate()
    assert (s.heartbeat_interval, s.dead_after, s.report_interval) == (2.0, 3.0, 10.0)
    assert s.ping_timeout == pytest.approx(1.0)  # a PING 2 s after the last packet, 1 s to answer
    assert s.report_deadline == pytest.approx(30.0)
    s = MasterSettings(heartbeat_interval=1.0, dead_after=3.0).validate()
    assert s.ping_timeout == pytest.approx(2.0)


@pytest.mark.parametrize("changes, complaint", [
    (dict(heartbeat_interval=2.0, dead_after=2.4), "by at least 0.5s"),
    (dict(heartbeat_interval=2.0, dead_after=2.0), "larger than heartbeat_interval"),
    (dict(heartbeat_interval=2.0, report_interval=1.0), "at least heartbeat_interval"),
    (dict(heartbeat_interval=1.0, dead_after=7.0, report_interval=2.0),
     "must be at least dead_after"),
    (dict(report_interval=0.0), "report_interval must be > 0"),
])
def test_timing_combinations_that_break_the_promises_are_refused(changes, complaint):
    with pytest.raises(SettingsError, match=complaint):
        MasterSettings(**changes).validate()


def test_the_edges_of_the_combination_are_accepted():
    MasterSettings(heartbeat_interval=1.0, dead_after=1.5, report_interval=1.0).validate()
    MasterSettings(heartbeat_interval=1.0, dead_after=3.0, report_interval=1.0).validate()


# -- what the master tells a slave ---------------------------------------------------


def test_the_hello_reply_gives_the_ping_and_report_intervals(tmp_path):
    async def body(world: World):
        mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW,
                               write_interval=30.0)
        hb = HeartbeatSessions(world.store, world.liveness, mirror, 2.0, clock=lambda: NOW,
                               wall_clock=lambda: 1.7e9, report_interval=10.0)
        host = new_uuid()
        _, reply = await hb.hello(pb.Hello(host_uuid=host, name_label="h",
                                           address="127.0.0.1:9", memory_total=8,
                                           memory_free=8, domains_digest="d0"))
        assert (reply.interval_ms, reply.report_interval_ms) == (2000, 10000)
    run(body, tmp_path)
