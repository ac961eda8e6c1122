"""Which master a slave's heartbeat stream goes to, with several masters.

`--master a,b,c` names every master. A follower answers the Hello with
HOST_IS_SLAVE naming the leader: the slave goes there at once. A master that
cannot be reached, or a follower that knows no leader yet (an election is
under way), sends it to the next one, after a short pause while some master
of the list is still untried, after the usual backoff once every master
failed in a row. Plain logic: the heartbeat client asks it after each failure.
"""

from __future__ import annotations

import logging

import grpc

from xcp_control import errors

log = logging.getLogger(__name__)

NEXT_DELAY = 0.02  # seconds before trying the next master or the leader named
ELECTION_DELAY = 0.2  # seconds before asking again while no leader is elected


class MasterList:
    """The masters of the pool and the one to talk to now."""

    def __init__(self, masters: str) -> None:
        self.masters = [m.strip() for m in masters.split(",") if m.strip()]
        self.current = self.masters[0]
        self._misses = 0  # masters that failed in a row since the last welcome

    def welcomed(self) -> None:
        self._misses = 0

    def go_to(self, leader: str) -> None:
        """A leader announced itself (SlaveService.FollowLeader): talk to it
        next, whether or not `--master` named it."""
        self.current = leader
        self._misses = 0

    def after_failure(self, exc: BaseException) -> float | None:
        """Move on after a failed attempt; the delay before the next one, or
        None for the caller's usual backoff."""
        if len(self.masters) < 2:
            return None
        info = errors.XcpError.from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else None
        slave_of = info is not None and info.reason == "HOST_IS_SLAVE"
        if slave_of and info.params["master"] and info.params["master"] != self.current:
            log.info("master %s is a follower: going to the leader %s", self.current,
                     info.params["master"])
            self.current = info.params["master"]
            return NEXT_DELAY
        position = self.masters.index(self.current) if self.current in self.masters else -1
        self.current = self.masters[(position + 1) % len(self.masters)]
        self._misses += 1
        if slave_of:
            return ELECTION_DELAY
        return NEXT_DELAY if self._misses < len(self.masters) else None
