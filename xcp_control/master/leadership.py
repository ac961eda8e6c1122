"""Election and fencing of the leader among several masters on etcd.

`Term` is the plain logic (every timing question takes `now`, a monotonic
reading): who leads, at which epoch, and whether this master may act. A
leader acts (writes, forwards, reaps) only while its lease is certainly
alive: less than `ttl - margin` after the moment it *sent* its last renewal
that etcd confirmed (etcd extends the lease from a moment no earlier than
that). A leader that cannot renew therefore stops acting before etcd can
expire its lease and elect another; a leader SIGSTOPped past its lease finds
its clock moved on when resumed and refuses at once (and etcd refuses its
epoch-guarded writes anyway).

A leader that stops acting has not necessarily lost its term: when etcd's
raft leader dies, renewals fail for 1.3-2.7 s (ETCD-FACTS.md) and the new
raft leader refreshes every lease, so the next renewal confirmed resumes the
same term, same epoch. While the term is *suspended* (still ours, not
acting, a renewal sent less than `patience` ago), the code that acts waits
for it (`Gate.ready`, bounded by the caller's deadline) instead of failing;
nothing is written or sent meanwhile. The term *ends* when etcd says the
lease is gone, another leader is seen, or the key goes: term listeners hear
it (routing then passes calls that never acted on to the new leader).

`Campaign` does the etcd side: a lease renewed every ttl/4 (hedged to every
member when not answered at once: EtcdClient.renew; retried at once, with a
short deadline, when a renewal fails: a request in flight to a dying etcd
member hangs until its deadline), kept until etcd says it is gone (our
clock running past it proves nothing: etcd may have refreshed it), a
campaign transaction on the leader key (`Compare(CreateRevision(key) == 0)`
then a put on the lease), epoch = the key's create revision, a watch (the
store's) that wakes the campaign when the key goes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

import grpc

from xcp_control import errors
from xcp_control.master import etcd_client as ec

log = logging.getLogger(__name__)

TransitionListener = Callable[[bool], None]  # True: this master now acts as leader
TermListener = Callable[[], None]  # the term this master held ended
# A suspended term is waited for while its last confirmed renewal was sent
# less than this many leases ago: etcd's writes stay unavailable for up to
# 2.7 s when its raft leader dies, plus a renewal period (ETCD-FACTS.md).
PATIENCE_LEASES = 3.0
RENEW_RETRY = 0.05  # seconds between a failed lease renewal and the next try


class Term:
    """Who leads and whether this master acts; plain logic."""

    def __init__(self, me: str, ttl: float, margin: float | None = None,
                 patience: float | None = None) -> None:
        self.me = me  # this master's advertised API address
        self.ttl = ttl
        self.margin = ttl / 4 if margin is None else margin
        self.patience = PATIENCE_LEASES * ttl if patience is None else patience
        self.leader = ""  # API address of the leader as last seen in etcd; "" none
        self.epoch = 0  # that leader's epoch
        self.masters: set[str] = set()
        self._mine = 0  # our epoch while we won and have caught up; 0 otherwise
        self._renewed_at: float | None = None  # send time of the last confirmed renewal
        self._acting = False
        self._held = 0  # the epoch listeners were last told we hold (0: none)
        self._listeners: list[TransitionListener] = []
        self._term_listeners: list[TermListener] = []
        self.elections_won = 0  # campaigns this master won (a metric, read at scrape time)

    def add_listener(self, listener: TransitionListener) -> None:
        """listener(acting) whenever this master starts or stops acting
        (a suspension stops it too)."""
        self._listeners.append(listener)

    def add_term_listener(self, listener: TermListener) -> None:
        """listener() when a term this master held ends for good (not when
        it is only suspended)."""
        self._term_listeners.append(listener)

    # -- facts from etcd ------------------------------------------------------

    def renewed(self, sent_at: float) -> None:
        """etcd confirmed a lease grant or renewal we sent at `sent_at`."""
        if self._renewed_at is None or sent_at > self._renewed_at:
            self._renewed_at = sent_at

    def lease_lost(self, now: float) -> None:
        """etcd says our lease is gone: nothing it held is ours any more."""
        self._renewed_at = None
        self._mine = 0
        self.tick(now)

    def leader_seen(self, address: str, epoch: int, now: float) -> None:
        self.leader, self.epoch = address, epoch
        if self._mine and epoch != self._mine:
            self._mine = 0  # another term began: ours is over
        self.tick(now)

    def leader_gone(self, now: float) -> None:
        self.leader, self.epoch, self._mine = "", 0, 0
        self.tick(now)

    def won(self, epoch: int, now: float) -> None:
        """Our campaign won at `epoch` and the working copy holds it."""
        self.leader, self.epoch, self._mine = self.me, epoch, epoch
        self.elections_won += 1
        self.tick(now)

    # -- questions ---------------------------------------------------------

    def lease_alive(self, now: float) -> bool:
        return self._renewed_at is not None and now < self._renewed_at + self.ttl - self.margin

    def lease_expired(self, now: float) -> bool:
        """etcd may have expired our lease by now (no margin left at all)."""
        return self._renewed_at is None or now >= self._renewed_at + self.ttl

    def acting(self, now: float) -> bool:
        return bool(self._mine) and self.lease_alive(now)

    @property
    def holds(self) -> bool:
        """We won a term that has not ended (acting or suspended)."""
        return bool(self._mine)

    def suspended(self, now: float) -> bool:
        """Our term, not acting, and worth waiting for: a renewal confirmed
        now would resume it (etcd may well still hold the lease)."""
        return (bool(self._mine) and not self.lease_alive(now)
                and self._renewed_at is not None and now < self.resumable_until)

    @property
    def resumable_until(self) -> float:
        """Until when a suspended term is waited for (see `suspended`)."""
        return -math.inf if self._renewed_at is None else self._renewed_at + self.patience

    def named_leader(self, now: float) -> str:
        """The leader to tell clients asking who leads (GetPool): ourselves
        while suspended too (our key is in etcd; no one else can lead)."""
        if self.leader == self.me and self.suspended(now):
            return self.me
        return self.visible_leader(now)

    def visible_leader(self, now: float) -> str:
        """The leader to name to others: never ourselves while we do not act
        (our key may outlive our certainty; then, as far as we can tell, no
        one leads). A renewal confirmed in time resumes the same term."""
        if self.leader == self.me and not self.acting(now):
            return ""
        return self.leader

    def fence(self, now: float) -> int:
        """Our epoch, to guard a write or a slave call; HOST_IS_SLAVE naming
        the leader (empty when it is us, deposed, or none) otherwise."""
        if self.acting(now):
            return self._mine
        raise errors.host_is_slave(self.visible_leader(now))

    def tick(self, now: float) -> None:
        """Tell listeners when acting starts or stops (called often: a lease
        running out is noticed here, not only by the next call)."""
        acting = self.acting(now)
        if acting != self._acting:
            self._acting = acting
            log.warning("this master %s", f"leads the pool, epoch {self._mine}" if acting
                        else "stopped acting as leader")
            for listener in self._listeners:
                listener(acting)
        if self._held and self._mine != self._held:
            log.warning("the term of epoch %d ended", self._held)
            self._held = 0
            for term_listener in self._term_listeners:
                term_listener()
        if acting:
            self._held = self._mine


@dataclass
class CallTerm:
    """One API call's part in a term (set by routing around the call)."""

    deadline: float | None  # monotonic time by which it must answer; None: no deadline
    acted: bool = False  # it passed the gate: it may have reached etcd or a slave


CALL: ContextVar[CallTerm | None] = ContextVar("xcp_call_term", default=None)


class Gate:
    """What the code that acts (etcd writes, slave calls) asks first: the
    epoch, at once while acting; while the term is suspended, after waiting
    (bounded) for a renewal to resume it; HOST_IS_SLAVE otherwise."""

    def __init__(self, term: Term, clock: Callable[[], float]) -> None:
        self._term, self._clock = term, clock
        self._changed = asyncio.Event()
        term.add_listener(lambda acting: self._wake())
        term.add_term_listener(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def fence(self) -> int:
        """The epoch now, or HOST_IS_SLAVE (no waiting)."""
        return self._term.fence(self._clock())

    async def ready(self, budget: float | None = None) -> int:
        """The epoch, waiting at most `budget` seconds for a suspended term
        to resume (None: until the current API call's deadline; no wait
        outside an API call). A call that passes is marked as having acted."""
        call = CALL.get()
        now = self._clock()
        if budget is not None:
            end = now + budget
        elif call is None:
            end = now
        else:
            end = math.inf if call.deadline is None else call.deadline
        while True:
            now = self._clock()
            term = self._term
            if term.acting(now) or not term.suspended(now) or now >= end:
                epoch = term.fence(now)  # HOST_IS_SLAVE unless acting
                if call is not None:
                    call.acted = True
                return epoch
            changed = self._changed
            try:
                async with asyncio.timeout(min(end, term.resumable_until) - now):
                    await changed.wait()
            except TimeoutError:
                pass


class Campaign:
    """Keeps a lease, campaigns for the leader key, follows who leads."""

    def __init__(self, term: Term, store, clock: Callable[[], float]) -> None:
        self._term, self._store, self._clock = term, store, clock
        self._client: ec.EtcdClient = store.client
        self._keys = store.keys
        self._lease = 0
        self._wake = asyncio.Event()
        self._seen_revision = 0
        store.add_key_listener(self._keys.leader, self._on_leader_key)
        store.add_key_listener(self._keys.masters, self._on_master_key)

    @property
    def _ttl_seconds(self) -> int:
        return max(int(round(self._term.ttl)), 1)

    async def run(self) -> None:
        """Until cancelled: hold a lease, campaign when no one leads, renew."""
        outage = False
        while True:
            try:
                await self._grant()
                await self._read_state()
                outage = False
                await self._hold()
            except grpc.RpcError as exc:
                if not outage:  # once per outage, not ten times a second
                    log.warning("etcd unreachable for the election (%s)", exc.code())
                outage = True
            self._term.tick(self._clock())
            await asyncio.sleep(0.1)

    async def resign(self) -> None:
        """Give the lease back (a clean stop): the others elect at once."""
        if self._lease:
            try:
                await self._client.revoke(self._lease, timeout=0.5)
            except grpc.RpcError:
                pass

    async def _grant(self) -> None:
        if self._lease:
            return
        sent = self._clock()
        reply = await self._client.grant(self._ttl_seconds)
        self._lease = reply.ID
        self._term.renewed(sent)
        await self._client.txn([], [ec.put_op(self._keys.masters + self._term.me.encode(),
                                              b"", lease=self._lease)])

    async def _read_state(self) -> None:
        reply = await self._client.range(self._keys.masters, ec.prefix_end(self._keys.masters))
        self._term.masters = {kv.key[len(self._keys.masters):].decode() for kv in reply.kvs}
        leader = await self._client.range(self._keys.leader)
        self._seen_revision = leader.header.revision
        if leader.kvs:
            kv = leader.kvs[0]
            await self._follow(kv.value.decode(), kv.create_revision)
        else:
            self._term.leader_gone(self._clock())

    async def _hold(self) -> None:
        """Renew every ttl/4; campaign whenever the leader key is absent.

        Each renewal is hedged (EtcdClient.renew): not answered within
        HEDGE_AFTER, it goes to every member through its own channel too, and
        the first answer counts from its own send time; a frozen member the
        main channel uses thus costs no lapse of the lease. A renewal that
        fails is tried again at once (after RENEW_RETRY), each try with a
        deadline of ttl/4: a request in flight to a dying etcd
        member hangs until its deadline, the channel moves to another member,
        and the first renewal a new raft leader confirms resumes the term.
        The lease is kept until etcd itself says it is gone: our clock running
        past it proves nothing (a new raft leader refreshes every lease to its
        full TTL), and while it is not confirmed this master does not act."""
        period = self._term.ttl / 4
        failing_since: float | None = None
        while True:
            if not self._term.leader:
                await self._campaign()
            self._wake.clear()
            pause = period if failing_since is None else RENEW_RETRY
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except asyncio.TimeoutError:
                pass
            sent = self._clock()
            try:
                answer = await self._client.renew(self._lease, timeout=period)
            except grpc.RpcError as exc:
                if failing_since is None:  # once per outage, not twenty times a second
                    log.info("lease renewal failed (%s); retrying", exc.code())
                    failing_since = sent
                self._term.tick(self._clock())
                continue
            left, sent = answer.value, answer.sent_at  # a hedge's own send time
            if left <= 0 and await self._still_held():
                # One member's word for a lease a quorum still holds (a member
                # with a stale view, e.g. one just resumed from SIGSTOP, which
                # a hedged renewal may reach). Not a renewal; tried again like
                # a failed one.
                if failing_since is None:
                    log.warning("an etcd member said our lease is gone; etcd still holds it")
                    failing_since = sent
                self._term.tick(self._clock())
                continue
            if left <= 0:
                log.warning("etcd dropped our lease")
                self._abandon()
                return
            if failing_since is not None:
                log.info("lease renewed again, %.2fs after sending the first renewal that failed",
                         self._clock() - failing_since)
            failing_since = None
            self._term.renewed(sent)
            self._term.tick(self._clock())

    async def _still_held(self) -> bool:
        """Whether etcd still holds our lease, by a linearizable read (a
        quorum confirms it: a stale raft leader cannot answer it) of our
        masters key, which lives on the lease; True too when etcd does not
        answer (the lease is not known to be gone: renewals go on, and no
        renewal is confirmed meanwhile)."""
        try:
            reply = await self._client.range(self._keys.masters + self._term.me.encode(),
                                             timeout=self._term.ttl / 4)
        except grpc.RpcError:
            return True
        return any(kv.lease == self._lease for kv in reply.kvs)

    def _abandon(self) -> None:
        """Our lease is gone or cannot be trusted: start over with a new one
        (the old one, with any leader key on it, expires in etcd)."""
        self._lease = 0
        self._term.lease_lost(self._clock())

    async def _campaign(self) -> None:
        key = self._keys.leader
        reply = await self._client.txn(
            [ec.create_revision_is(key, 0)],
            [ec.put_op(key, self._term.me.encode(), lease=self._lease)],
            [ec.get_op(key)])
        if not reply.succeeded:
            kvs = reply.responses[0].response_range.kvs
            if kvs:
                await self._follow(kvs[0].value.decode(), kvs[0].create_revision)
            return
        epoch = reply.header.revision
        # Serve only once the working copy holds every write of earlier terms.
        if not await self._store.wait_revision(epoch, timeout=self._term.ttl):
            log.warning("won epoch %d but the watch lags; resigning", epoch)
            await self._client.txn([ec.create_revision_is(key, epoch)], [ec.delete_op(key)])
            return
        log.info("won the election: epoch %d", epoch)
        self._term.won(epoch, self._clock())

    async def _follow(self, address: str, epoch: int) -> None:
        if address == self._term.me:
            if not self._term.acting(self._clock()):
                # Our own key from an earlier lease or process: not a term we
                # hold. Deleting it (guarded by its epoch) lets the election run.
                await self._client.txn([ec.create_revision_is(self._keys.leader, epoch)],
                                       [ec.delete_op(self._keys.leader)])
            return
        self._term.leader_seen(address, epoch, self._clock())

    def _on_leader_key(self, key: bytes, value: bytes | None, revision: int) -> None:
        if key != self._keys.leader or revision <= self._seen_revision:
            return
        if value is None:
            self._term.leader_gone(self._clock())
            self._wake.set()
        elif value.decode() != self._term.me:
            self._term.leader_seen(value.decode(), revision, self._clock())

    def _on_master_key(self, key: bytes, value: bytes | None, revision: int) -> None:
        address = key[len(self._keys.masters):].decode()
        if value is None:
            self._term.masters.discard(address)
        else:
            self._term.masters.add(address)
