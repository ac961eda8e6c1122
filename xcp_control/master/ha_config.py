"""What the leader tells each slave about HA, on its heartbeat stream, and
what it records of what each slave acknowledged.

The config (enabled, the Pool.ha_generation it belongs to, the host's own
fence_after, the leader's detection bound) is in every Hello answer, and
switching HA on or off is pushed to every open stream at once (small
messages). The host's witness list (master/ha_witness.py: at most K = 32
other hosts and their SlaveService addresses, for the liveset rule) rides the
Hello answer when the host lacks it, and is pushed at once when it changes:
lists are tiny, so there is no pacing and no O(hosts) message; a join at
10,000 hosts changes one list (the newcomer's), a host leaving about K.
Nothing here runs per beat: only a Hello, an acknowledging report, a
SetHaConfig or a host joining, leaving or moving does work.

Acknowledgements (the leader must know what every slave may hold, across a
failover too; each value is written to the Host record only when it flips,
in batches the store's group commit takes together):
- The slave answers every config it applies with a report (Beat.ha_ack)
  carrying the generation and the witness-list version it now holds, and its
  Hello says the same of what it held before the stream.
- Witness lists: a new list is recorded as pending (version, members) in the
  Host record before it is sent, and becomes the acknowledged one when the
  slave names its version. One is pending at a time (the next waits for that
  acknowledgement), so a slave holds the acknowledged list or the pending one,
  and HA's proof before a restart needs a strict majority of each
  (ha_quorum.py). A Hello drops a pending list the slave does not name (its
  old stream, which carried it, is gone); a Hello that names none (a fresh
  process) clears both.
- Armed (Host.ha_armed_generation): the slave reported HA on at the pool's
  current generation, so it fences on a lost lease. The generation is bumped
  on each switch-on (pool_ha.py), so a switch-off writes nothing per host and
  a host armed before it is not armed for the next one until it acknowledges
  again. A host's Hello that holds less than the current generation disarms
  it (in the Hello's own write, durable before the answer). The restarter
  restarts a lost host's VMs only if it is armed (ha_restart.py): a host lost
  just as HA was switched on, which never heard it, keeps running its VMs and
  they are not started elsewhere; DeclareDead still restarts them (the
  operator asserts the fence).

Every HA field of a Host record is the leader's; another writer's put based
on an older copy of the record would undo them. So every Host put, whoever
makes it, carries the fields as this leader last decided them (`keep_fields`,
a store put hook wired in server.py), and a host change whose HA fields still
differ from what this leader knows (one queued before the decision) is
written again (on_changes).

fence_after is the slave's setting (`xcp-slave --fence-after`), sent in its
Hello and kept here per host (the restarter reads it: ha_restart.py), and in
the store (Host.fence_after_ms), so that a new leader knows the lease of a
host that has not said Hello to it yet. One not above the leader's detection
bound (dead_after) plus the slave's transport bound (three PING intervals) is
raised to that floor + 1 s: the slave counts its lease that much earlier than
the last moment it saw its stream open, so such a host would fence while its
stream is healthy. The slave takes the value it is told.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from xcp_control.master import ha_witness
from xcp_control.master.ha_witness import Ring, Witnesses
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.store import Change, Put, Store
from xcp_control.model import copy
from xcp.v1 import datamodel_pb2 as dm, liveness_service_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_FENCE_AFTER = 10.0  # seconds: a slave that sends none (DESIGN.md)
BATCH = 500  # Host records per commit when many lists change at once (HA switched on)

Push = Callable[[str, pb.HeartbeatResponse], None]


class HaAnnouncer:
    """Fills the HA config into Hello answers, pushes it on change, keeps each
    host's witness list and records what the hosts acknowledged (see the
    module's docstring)."""

    def __init__(self, store: Store, pool_ha: PoolHa, detect_bound: float,
                 transport_bound: float = 0.0, k: int = ha_witness.K,
                 acting: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        self._pool_ha = pool_ha
        self._k = k
        self._acting = acting  # several masters: only the leader writes and sends
        self.detect_bound = detect_bound
        # The slave's own bound (its channel's keepalive time + timeout, three
        # PING intervals: rpc/options.py); its lease starts this much earlier too.
        self.transport_bound = transport_bound
        self._fence_after: dict[str, float] = {}  # host -> its fence_after (seconds)
        # Set by the wiring: push(host, message) onto an open stream, and the
        # hosts with one open (LivenessServicer.push / .open_hosts).
        self.push: Push | None = None
        self.open_hosts: Callable[[], Iterable[str]] = lambda: ()
        # The witness book, built from the store when first needed (and again
        # when this master starts leading): the ring, each host's lists.
        self._ring: Ring | None = None
        self._state: dict[str, Witnesses] = {}
        self._witness_of: dict[str, set[str]] = {}  # h -> hosts whose lists hold h
        self._address: dict[str, str] = {}  # host -> its SlaveService address, as last seen
        self._short: set[str] = set()  # hosts whose newest list is below K
        self._held: dict[str, int] = {}  # host -> list version its current stream holds
        self._sent: dict[str, int] = {}  # host -> list version sent on its current stream
        self._arm: dict[str, int] = {}  # host -> generation it acknowledged (to record)
        self._armed: dict[str, int] = {}  # host -> ha_armed_generation as last decided here
        self._joining: set[str] = set()  # Hello taken, answer not yet given
        self._dirty: set[str] = set()  # hosts whose lists or records to look at again
        self._enabled: bool | None = None  # what the open streams were last told
        self._worker: asyncio.Task | None = None
        self.writes = 0  # Host records written (tests, diagnostics)

    # -- what the restarter asks ---------------------------------------------

    def fence_after(self, host: str) -> float:
        """The host's lease: as agreed at its Hello to us, else as stored from
        its Hello to an earlier leader (a failover), else the default."""
        if host in self._fence_after:
            return self._fence_after[host]
        record = self._store.get("host", host)
        if record is not None and record.fence_after_ms:
            return record.fence_after_ms / 1000
        return DEFAULT_FENCE_AFTER

    def may_hold(self, host: str) -> list[tuple[str, ...]]:
        """Every witness list the host may hold (ha_witness.Witnesses.may_hold)."""
        self._book()
        return self._state.get(host, Witnesses()).may_hold()

    def armed(self, host: str) -> bool:
        """The host acknowledged HA on for the pool's current generation, as
        recorded in the store (durable: a new leader reads the same)."""
        pool = self._pool_ha.settings()
        record = self._store.get("host", host)
        return pool.ha_enabled and pool.ha_generation > 0 and record is not None \
            and record.ha_armed_generation == pool.ha_generation

    # -- the book ------------------------------------------------------------

    def _book(self) -> Ring:
        if self._ring is None:
            hosts = self._store.list("host")
            self._ring = Ring(h.uuid for h in hosts if h.address)
            self._address = {h.uuid: h.address for h in hosts}
            self._state, self._witness_of, self._short = {}, {}, set()
            for h in hosts:
                self._set(h.uuid, Witnesses.of(h))
        return self._ring

    def _set(self, host: str, state: Witnesses) -> None:
        before = self._state.get(host, Witnesses())
        for member in set(before.acked) | set(before.pending):
            self._witness_of.get(member, set()).discard(host)
        self._state[host] = state
        for member in set(state.acked) | set(state.pending):
            self._witness_of.setdefault(member, set()).add(host)
        if len(state.latest[1]) < self._k:
            self._short.add(host)
        else:
            self._short.discard(host)

    def lead(self) -> None:
        """This master starts leading: what the hosts hold is read from the
        store again (an earlier leader recorded it), and every list is looked
        at once."""
        self._ring = None
        self._held.clear()
        self._sent.clear()
        self._arm.clear()
        self._enabled = None
        self._book()
        self._dirty |= set(self._state)
        self._schedule()

    def _wanted(self, host: str, state: Witnesses) -> Witnesses:
        """With HA on: the state once the host's list is brought up to date
        (a new pending list), or as it is."""
        if not self._pool_ha.enabled:
            return state
        members = ha_witness.choose(host, state.latest[1], self._book(), self._k)
        return state.want(members) or state

    # -- a Hello -------------------------------------------------------------

    def keep(self, host: str, hello: pb.Hello) -> None:
        """A Hello: keep the host's fence_after. One not above the floor
        (dead_after + the slave's transport bound) would make a healthy host
        fence: the leader raises it to the floor + 1 s, says so in the log,
        and tells the slave the value it took (HeartbeatResponse.fence_after_ms),
        so both sides count the same lease."""
        fence_after = hello.fence_after_ms / 1000 if hello.fence_after_ms else DEFAULT_FENCE_AFTER
        # The slave's channel may be slower to notice us than our interval says
        # (its first stream is built before it hears our interval).
        floor = self.detect_bound + max(self.transport_bound, hello.transport_bound_ms / 1000)
        if fence_after <= floor:
            log.warning("host %s asks for fence_after %.1fs, not above dead_after + 3 PING "
                        "intervals (%.1fs): using %.1fs", host, fence_after, floor, floor + 1)
            fence_after = floor + 1.0
        self._fence_after[host] = fence_after
        # Its new stream opens once the answer is given: nothing to the old one meanwhile.
        self._joining.add(host)
        self._sent.pop(host, None)
        self._held[host] = hello.ha_witness_version

    def on_hello(self, host: str, hello: pb.Hello, record: dm.Host) -> None:
        """The HA fields of the host's record as its Hello leaves them (the
        caller writes the record, durably, before the answer): what it says it
        holds, a new witness list to send with the answer, and disarmed if it
        holds less than the pool's current generation."""
        self._book()
        state = self._state.get(host, Witnesses()).reported(hello.ha_witness_version, True)
        state = self._wanted(host, state)
        self._set(host, state)
        state.store_in(record)
        pool = self._pool_ha.settings()
        if pool.ha_enabled and pool.ha_generation:
            if hello.ha_generation == pool.ha_generation:
                record.ha_armed_generation = pool.ha_generation
            elif record.ha_armed_generation == pool.ha_generation:
                record.ha_armed_generation = 0  # a fresh process: not told yet
        self._armed[host] = record.ha_armed_generation
        self._arm.pop(host, None)

    def keep_fields(self, record: dm.Host) -> None:
        """A store put hook: the HA fields as this leader last decided them,
        on any Host record put (another writer's copy may be older)."""
        state = self._state.get(record.uuid)
        if state is not None:
            state.store_in(record)
        if record.uuid in self._armed:
            record.ha_armed_generation = self._armed[record.uuid]

    def fill(self, host: str, answer: pb.HeartbeatResponse) -> pb.HeartbeatResponse:
        """The Hello answer: the config, and the host's witness list when it
        holds another (the pending one is durable: on_hello's record was
        written before this)."""
        self._joining.discard(host)
        self._config(host, answer)
        self._with_list(host, answer)
        self._schedule()  # what waited for the Hello (a list changed meanwhile)
        return answer

    def _config(self, host: str, answer: pb.HeartbeatResponse) -> pb.HeartbeatResponse:
        pool = self._pool_ha.settings()
        answer.ha_config = True
        answer.ha_enabled = pool.ha_enabled
        answer.ha_generation = pool.ha_generation if pool.ha_enabled else 0
        answer.fence_after_ms = round(self.fence_after(host) * 1000)
        answer.detect_bound_ms = round(self.detect_bound * 1000)
        return answer

    def _with_list(self, host: str, answer: pb.HeartbeatResponse) -> bool:
        """Add the host's newest list to `answer` if its stream lacks it."""
        version, members = self._state.get(host, Witnesses()).latest
        if not version or not members or self._held.get(host) == version \
                or self._sent.get(host) == version:
            return False
        for member in members:
            record = self._store.get("host", member)
            # A member without an address stays in the list (unreachable to
            # the slave): the slave's majority is of the list the leader has.
            answer.peers.add(host_uuid=member, address=record.address if record else "")
        answer.witness_version = version
        self._sent[host] = version
        return True

    def _send_list(self, host: str) -> None:
        if self.push is None or host in self._joining or host not in self._held:
            return  # no stream of it open (held is set at its Hello)
        message = self._config(host, pb.HeartbeatResponse())
        if self._with_list(host, message):
            self.push(host, message)

    # -- an acknowledgement --------------------------------------------------

    def on_ack(self, host: str, beat: pb.Beat) -> None:
        """A report acknowledging a config the slave applied (Beat.ha_ack)."""
        self._book()
        self._held[host] = beat.ha_witness_version
        state = self._state.get(host, Witnesses())
        after = state.reported(beat.ha_witness_version, False)
        if after != state:
            self._set(host, after)
        if beat.ha_generation:
            self._arm[host] = beat.ha_generation
        self._dirty.add(host)
        self._schedule()

    # -- changes -------------------------------------------------------------

    def on_changes(self, changes: list[Change]) -> None:
        """A store listener: HA switched on or off is pushed to every stream at
        once (and on, every list is looked at); a host joining, leaving or
        changing address changes the lists it is in, or could join."""
        if any(c.class_name == "pool" for c in changes):
            self._announce_enabled()
        if self._ring is None:
            return
        for c in changes:
            if c.class_name != "host":
                continue
            host, address = c.uuid, ("" if c.op == "del" else c.obj.address)
            moved = self._address.get(host, "") not in ("", address)
            self._address[host] = address
            if c.op == "del":
                self._address.pop(host, None)
                self._set(host, Witnesses())
                self._state.pop(host, None)
                self._armed.pop(host, None)
                self._short.discard(host)
                self.forget(host)
            elif Witnesses.of(c.obj) != self._state.get(host, Witnesses()):
                self._dirty.add(host)  # an older copy was written over ours: again
            if address and self._ring.add(host):
                if self._pool_ha.enabled:
                    self._dirty |= self._short  # a list below K may take it
                    self._dirty.add(host)
            elif not address and self._ring.remove(host):
                self._dirty |= self._witness_of.get(host, set())  # replace it
            elif address and moved:
                # It moved: the hosts holding it get its new address (same version).
                for holder in self._witness_of.get(host, set()):
                    if self._sent.get(holder) == self._state[holder].latest[0]:
                        self._sent.pop(holder, None)
                    if self._held.get(holder) == self._state[holder].latest[0]:
                        self._held[holder] = -1
                    self._dirty.add(holder)
        self._schedule()

    def _announce_enabled(self) -> None:
        enabled = self._pool_ha.enabled
        if enabled == self._enabled or self.push is None or not self._acting():
            return  # another HA setting changed: nothing the slaves use
        self._enabled = enabled
        # Small messages, all at once: from now on every slave fences on a lost
        # lease (it acknowledges: armed), or none does.
        for host in list(self.open_hosts()):
            if host not in self._joining:
                self.push(host, self._config(host, pb.HeartbeatResponse()))
        if enabled:
            self._book()
            self._dirty |= set(self._state)
            self._schedule()

    def forget(self, host: str) -> None:
        self._fence_after.pop(host, None)
        self._held.pop(host, None)
        self._sent.pop(host, None)
        self._arm.pop(host, None)
        self._joining.discard(host)

    # -- writing and sending -------------------------------------------------

    def _schedule(self) -> None:
        if not self._dirty or (self._worker is not None and not self._worker.done()):
            return
        try:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        except RuntimeError:  # no loop (a plain test): on the next call with one
            self._worker = None

    async def _work(self) -> None:
        while self._dirty:
            if not self._acting():
                self._dirty.clear()
                return
            batch = [h for h in self._dirty if h not in self._joining][:BATCH]
            self._dirty.difference_update(batch)
            if not batch:
                return  # each waits for its Hello's answer (fill schedules again)
            await self._write_and_send(batch)
            await asyncio.sleep(0)  # heartbeats and calls between two batches

    async def _write_and_send(self, hosts: list[str]) -> None:
        pool = self._pool_ha.settings()
        puts = []
        for host in hosts:
            record = self._store.get("host", host)
            if record is None:
                continue
            state = self._wanted(host, self._state.get(host, Witnesses()))
            self._set(host, state)
            updated = copy(record)
            state.store_in(updated)
            generation = self._arm.pop(host, 0)
            if pool.ha_enabled and generation == pool.ha_generation:
                updated.ha_armed_generation = generation
                self._armed[host] = generation
            if updated != record:
                puts.append(Put(updated))
        if puts:
            await self._store.commit(puts)  # durable before any list is sent
            self.writes += len(puts)
        for host in hosts:
            if host in self._state:
                self._send_list(host)

    async def settled(self, timeout: float = 5.0) -> None:
        """Until nothing is left to write or send (tests)."""
        async def idle() -> None:
            while self._worker is not None and not self._worker.done():
                await asyncio.shield(self._worker)
        await asyncio.wait_for(idle(), timeout)
