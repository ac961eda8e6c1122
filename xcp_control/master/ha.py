"""Several masters on etcd: the pieces `Master` plugs in when `--etcd` is set.

`HaNode` holds the etcd store, the election (`Term`, `Campaign`) and the
router that passes calls on to the leader. The master asks it three things:
the store to use, the fence (the epoch, or HOST_IS_SLAVE) for writes, slave
calls and heartbeat answers (`ready`: the same, waiting within the caller's
deadline while the term is suspended, leadership.Gate), and to be told when
this master starts or stops acting as leader. Without `--etcd` none of this
exists and the master is the single master it always was.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from xcp_control.master.etcd_client import EtcdClient
from xcp_control.master.etcd_store import EtcdStore
from xcp_control.master.leadership import Campaign, Gate, Term, TransitionListener
from xcp_control.master.routing import LeaderChannel, Router
from xcp_control.settings import MasterSettings
from xcp.v1 import datamodel_pb2 as dm

log = logging.getLogger(__name__)

# The channel a follower passes calls on with: calls are short and the leader
# is on the same network; a leader that went silent is noticed by keepalive.
_PASS_ON_OPTIONS = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 1000),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 500)]


class HaNode:
    """This master's part in a pool of several masters on etcd."""

    def __init__(self, settings: MasterSettings, clock: Callable[[], float],
                 channel_credentials=None) -> None:
        self._clock = clock
        self.term = Term(me="", ttl=settings.lease_ttl)
        self.gate = Gate(self.term, clock)
        self.etcd = EtcdClient(settings.etcd, clock=clock)
        self.store = EtcdStore(self.etcd, settings.etcd_prefix, self.fence,
                               change_log_size=settings.change_log_size, ready=self.ready)
        self._leader_channel = LeaderChannel(channel_credentials, _PASS_ON_OPTIONS)
        self.router = Router(self.term, clock, self._leader_channel)
        self._campaign: Campaign | None = None
        self._task: asyncio.Task | None = None

    @classmethod
    def build(cls, settings: MasterSettings, clock: Callable[[], float]) -> "HaNode | None":
        """The HA pieces when `--etcd` is set, else None (one master on SQLite)."""
        return cls(settings, clock) if settings.etcd else None

    def fence(self) -> int:
        """The epoch to act with; HOST_IS_SLAVE while this master may not act."""
        return self.term.fence(self._clock())

    async def ready(self, budget: float | None = None) -> int:
        """The epoch to act with, waiting (bounded) while the term is suspended."""
        return await self.gate.ready(budget)

    def acting(self) -> bool:
        return self.term.acting(self._clock())

    def add_listener(self, listener: TransitionListener) -> None:
        self.term.add_listener(listener)

    def use_credentials(self, credentials) -> None:
        """Mutual TLS as this master for the calls passed on to the leader
        (None: plaintext); set before serving."""
        self._leader_channel.credentials = credentials

    def start(self, me: str) -> None:
        """Campaign as `me` (the API address slaves and clients are sent to)."""
        self.term.me = me
        self._campaign = Campaign(self.term, self.store, self._clock)
        self._task = asyncio.create_task(self._campaign.run(), name="campaign")

    def tick(self) -> None:
        self.term.tick(self._clock())

    def describe(self, pool: dm.Pool) -> None:
        pool.master = self.term.named_leader(self._clock())
        pool.epoch = self.term.epoch if pool.master else 0
        pool.masters.extend(sorted(self.term.masters))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._campaign is not None:
            await self._campaign.resign()
        await self._leader_channel.close()
