"""Load shedding on loop lag: a fake clock, no sleeping."""

import pytest

from xcp_control.master.admission import LoopLag


def probes(lag: LoopLag, lateness: list[float], tick: float = 0.1) -> list[bool]:
    """Feed probes late by these amounts; `busy` after each."""
    now, seen = 0.0, []
    for late in lateness:
        expected = now + tick
        now = expected + late
        lag.observe(expected, now)
        seen.append(lag.busy)
    return seen


def test_a_punctual_loop_is_never_busy():
    assert not any(probes(LoopLag(limit=0.5), [0.0, 0.001, 0.003] * 100))


def test_one_late_wakeup_is_no_trend():
    assert not any(probes(LoopLag(limit=0.5), [0.0, 1.5, 0.0, 0.0]))
    # not even a long one (the process was SIGSTOPped, say)
    assert not any(probes(LoopLag(limit=0.5), [0.0, 30.0, 0.0, 0.0]))


def test_sustained_lag_is_busy_and_recovery_clears_it():
    lag = LoopLag(limit=0.5)
    seen = probes(lag, [1.0] * 3 + [0.0] * 10)
    assert seen[:3] == [False, True, True]  # smoothed 0.3 s, then 0.51 s: busy from the second
    assert seen[-1] is False and lag.lag < 0.1
    assert seen.index(False, 3) <= 6  # clear within a few punctual probes


def test_early_wakeups_count_as_no_lag():
    lag = LoopLag(limit=0.5)
    lag.observe(expected=10.0, now=9.0)
    assert lag.lag == 0.0


def test_limit_zero_never_sheds():
    assert not any(probes(LoopLag(limit=0.0), [5.0] * 10))


def test_smoothing_is_checked():
    with pytest.raises(ValueError):
        LoopLag(limit=0.5, smoothing=0)
