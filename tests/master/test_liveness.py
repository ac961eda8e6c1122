"""Every edge of the reaper, on a fake clock: no test here sleeps."""

from xcp_control.master.liveness import Liveness

DEAD_AFTER = 3.0
A, B = "host-a", "host-b"


def make(started_at: float = 100.0, grace: float = DEAD_AFTER) -> tuple[Liveness, list]:
    flips: list[tuple[str, bool]] = []
    liveness = Liveness(DEAD_AFTER, grace, started_at)
    liveness.add_listener(lambda host, live: flips.append((host, live)))
    return liveness, flips


def test_first_beat_makes_a_host_live_and_flips_once():
    liveness, flips = make()
    liveness.beat(A, 101.0)
    liveness.beat(A, 102.0)
    assert liveness.is_live(A)
    assert flips == [(A, True)]


def test_exactly_at_dead_after_is_still_live():
    liveness, _ = make()
    liveness.beat(A, 110.0)
    assert liveness.reap(110.0 + DEAD_AFTER) == []
    assert liveness.is_live(A)


def test_just_past_dead_after_is_not_live():
    liveness, flips = make()
    liveness.beat(A, 110.0)
    assert liveness.reap(110.0 + DEAD_AFTER + 0.001) == [A]
    assert not liveness.is_live(A)
    assert flips == [(A, True), (A, False)]


def test_reap_takes_only_the_silent_hosts():
    liveness, _ = make()
    liveness.beat(A, 110.0)
    liveness.beat(B, 111.0)
    liveness.beat(A, 112.5)  # A beats again: B is now the oldest
    assert liveness.reap(114.2) == [B]
    assert liveness.is_live(A)


def test_a_reaped_host_is_reaped_once():
    liveness, flips = make()
    liveness.beat(A, 110.0)
    liveness.reap(120.0)
    assert liveness.reap(130.0) == []
    assert flips.count((A, False)) == 1


def test_flapping_host_flips_each_time():
    liveness, flips = make()
    for t in (110.0, 120.0, 130.0):
        liveness.beat(A, t)
        liveness.reap(t + DEAD_AFTER + 1)
    assert flips == [(A, True), (A, False)] * 3


def test_goodbye_marks_down_at_once():
    liveness, flips = make()
    liveness.beat(A, 110.0)
    assert liveness.mark_down(A)
    assert not liveness.is_live(A)
    assert not liveness.mark_down(A)  # already down: no second flip
    assert flips == [(A, True), (A, False)]


def test_stream_end_marks_down_unless_superseded():
    liveness, _ = make()
    old = liveness.attach(A)
    liveness.beat(A, 110.0)
    new = liveness.attach(A)  # the slave reconnected before the old stream ended
    assert not liveness.detach(A, old)
    assert liveness.is_live(A)
    assert liveness.detach(A, new)
    assert not liveness.is_live(A)


def test_startup_grace_keeps_stored_state():
    liveness, flips = make(started_at=100.0)
    liveness.restore([(A, True), (B, False)], 100.0)
    assert liveness.is_live(A) and not liveness.is_live(B)
    assert liveness.reap(100.0 + DEAD_AFTER - 0.01) == []  # within grace: not judged
    assert liveness.reap(100.0 + DEAD_AFTER + 0.01) == [A]  # grace over, never beat
    assert flips == [(A, False)]  # restoring is not a flip


def test_host_that_beats_during_grace_stays_live():
    liveness, _ = make(started_at=100.0)
    liveness.restore([(A, True)], 100.0)
    liveness.beat(A, 102.0)
    assert liveness.reap(104.0) == []
    assert liveness.is_live(A)
    assert liveness.reap(105.01) == [A]


def test_no_judgement_during_a_long_grace():
    liveness, _ = make(started_at=100.0, grace=10.0)
    liveness.beat(A, 100.5)
    assert liveness.reap(109.9) == []
    assert liveness.reap(110.0) == [A]


def test_forget_drops_everything():
    liveness, _ = make()
    stream = liveness.attach(A)
    liveness.beat(A, 110.0)
    liveness.forget(A)
    assert not liveness.is_live(A)
    assert liveness.last_seen(A) is None
    assert not liveness.detach(A, stream)
