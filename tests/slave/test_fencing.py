"""The slave refuses calls from a deposed leader's epoch (slave/fencing.py)."""

from __future__ import annotations

import pytest

from xcp_control.errors import XcpError
from xcp_control.slave.fencing import EpochFence, _epoch_of


def test_older_epochs_are_refused_once_a_newer_one_was_seen():
    fence = EpochFence()
    fence.admit(5)
    fence.seen(9)  # the new leader's Hello answer
    fence.admit(9)
    with pytest.raises(XcpError) as stale:
        fence.admit(5)
    assert stale.value.reason == "STALE_MASTER"
    assert stale.value.params == {"epoch": "5", "seen": "9"}
    assert stale.value.code.name == "FAILED_PRECONDITION"


def test_a_newer_epoch_on_a_call_raises_the_bar():
    fence = EpochFence()
    fence.admit(12)
    assert fence.newest == 12
    with pytest.raises(XcpError):
        fence.admit(11)


def test_the_epoch_header_is_read_and_garbage_is_older_than_anything():
    assert _epoch_of([("xcp-epoch", "42")]) == 42
    assert _epoch_of([("other", "1")]) is None
    assert _epoch_of(None) is None
    assert _epoch_of([("xcp-epoch", "x")]) == -1
