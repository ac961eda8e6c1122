"""Which master a slave goes to with several masters (slave/masters.py)."""

from __future__ import annotations

from xcp_control import errors
from xcp_control.slave.masters import ELECTION_DELAY, NEXT_DELAY, MasterList


class Refused(Exception):
    """Stands for a master that cannot be reached (no catalogued error)."""


def host_is_slave(master: str):
    """An RpcError carrying HOST_IS_SLAVE, as a follower's Hello answer does."""
    import grpc

    status = errors.host_is_slave(master).to_status()

    class _Error(grpc.RpcError):
        def code(self):
            return status.code

        def details(self):
            return status.details

        def trailing_metadata(self):
            return status.trailing_metadata
    return _Error()


def test_one_master_keeps_the_usual_backoff():
    masters = MasterList("m1:1")
    assert masters.after_failure(Refused()) is None and masters.current == "m1:1"


def test_a_follower_sends_the_slave_to_the_leader_at_once():
    masters = MasterList("m1:1,m2:2,m3:3")
    assert masters.after_failure(host_is_slave("m3:3")) == NEXT_DELAY
    assert masters.current == "m3:3"


def test_unreachable_masters_are_skipped_quickly_then_backed_off():
    masters = MasterList("m1:1,m2:2,m3:3")
    assert masters.after_failure(Refused()) == NEXT_DELAY and masters.current == "m2:2"
    assert masters.after_failure(Refused()) == NEXT_DELAY and masters.current == "m3:3"
    assert masters.after_failure(Refused()) is None and masters.current == "m1:1"
    masters.welcomed()
    assert masters.after_failure(Refused()) == NEXT_DELAY


def test_no_leader_elected_yet_asks_the_next_master_soon():
    masters = MasterList("m1:1,m2:2")
    assert masters.after_failure(host_is_slave("")) == ELECTION_DELAY
    assert masters.current == "m2:2"


def test_a_leader_named_outside_the_list_is_followed_then_left_for_the_list():
    masters = MasterList("m1:1,m2:2")
    masters.after_failure(host_is_slave("m9:9"))
    assert masters.current == "m9:9"
    masters.after_failure(Refused())
    assert masters.current == "m1:1"
