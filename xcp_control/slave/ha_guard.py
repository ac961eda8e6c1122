"""The slave's self-fencing, running: the lease (self_fence.py) fed from the
heartbeat stream, checked every tick and before every SlaveService call.

`SelfFencing.check(now)`:
1. Confirm the lease while the heartbeat stream is open (README, "What a
   slave may conclude": a healthy stream is the acknowledgement). After a gap
   in our own ticks (the process was SIGSTOPped, or starved), the stream's
   `connected` flag is stale: the transport has not had time to notice a
   master that went away meanwhile. Confirms are then held back for
   transport_bound, the time the transport takes to notice (its keepalive
   time plus timeout), so a resumed slave never renews its lease on a stream
   that is in fact dead.
2. When the lease ran out: the liveset rule. Ask every peer of our witness
   list (PeerStatus, short deadline; at most 32: master/ha_witness.py)
   whether it hears the leader; a majority reached and none
   hearing it means the master tier is down, not us: keep the domains and
   ask again one hold_extension later (xcp_control/lease.py). Otherwise fence:
   refuse domain operations at once, destroy every domain, log it loudly;
   until the next confirm, domain operations get HOST_FENCED.
3. A slave whose lease was held when the answer changes does not fence at
   once: after a master-tier outage the others may just have reconnected
   first. It reconnects now (skipping its backoff) and fences only if it is
   not acknowledged within REJOIN_WINDOW. The leader allows for this: it
   restarts nothing until a majority of hosts have been connected for
   hold_bound (master/ha_quorum.py).

What PeerStatus answers others is our stream's own flag, unfiltered, and
how long it has been connected: "I hear the leader" is the answer that makes
a peer fence rather than keep, so when in doubt (a stale flag after a pause)
it is the safe one, and the leader's quorum proof (lease.py, 3.) relies on a
host connected throughout a period having said so throughout it.

Because the check also runs first in every SlaveService call
(`GuardInterceptor`), a slave resumed past its lease fences before it answers
anything, ListDomains included.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

import grpc

from xcp_control import errors
from xcp_control.lease import PEER_DEADLINE, REJOIN_WINDOW, TICK
from xcp_control.rpc.channels import open_channel
from xcp_control.security.pki import host_dns_name
from xcp_control.slave.hypervisor import Hypervisor
from xcp_control.slave.self_fence import FenceLease, HaConfig, Verdict, liveset_verdict
from xcp.v1 import slave_service_pb2 as pb, slave_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

GAP = 1.0  # a pause between ticks this long means our view of the stream is stale
PEER_METHOD = "/xcp.v1.SlaveService/PeerStatus"
# Calls that change domains: refused while fenced. ListDomains (it answers
# the empty list), SetEnabled and PeerStatus still answer.
DOMAIN_OPERATIONS = frozenset(f"/xcp.v1.SlaveService/{m}" for m in (
    "StartDomain", "ShutdownDomain", "RebootDomain", "PauseDomain", "UnpauseDomain",
    "DestroyDomain"))

AskPeers = Callable[[Sequence[tuple[str, str]]], Awaitable[tuple[int, int]]]


class SelfFencing:
    """The lease, the liveset rule and the fence itself."""

    def __init__(self, host: str, hypervisor: Hypervisor,
                 connected_since: Callable[[], float | None],
                 transport_bound: Callable[[], float], ask_peers: AskPeers,
                 clock: Callable[[], float],
                 rejoin: Callable[[], None] = lambda: None) -> None:
        self.host = host
        self._hv = hypervisor
        self._connected_since = connected_since  # our stream's, None while down
        self._rejoin = rejoin  # reconnect to the leader now, skipping the backoff
        self._transport_bound = transport_bound
        self._ask_peers = ask_peers
        self._clock = clock
        self.lease = FenceLease(transport_bound())
        self._last_tick: float | None = None
        self._hold_until = 0.0  # no confirm before this (after a gap)
        self._rejoin_by: float | None = None  # a held lease ended: fence unless back by then
        self._lock = asyncio.Lock()
        self.fences = 0  # how many times this host fenced (tests, metrics)

    @property
    def fenced(self) -> bool:
        return self.lease.fenced

    @property
    def rejoin_by(self) -> float | None:
        """A held lease ran out without "keep": fenced unless acknowledged by then."""
        return self._rejoin_by  # read by the host watchdog (watchdog.py)

    def _hears_leader(self) -> bool:
        return self._connected_since() is not None

    def peer_status(self) -> tuple[bool, float]:
        """What PeerStatus answers: whether our stream is up (its own flag,
        unfiltered: the safe answer when in doubt), and for how long."""
        since = self._connected_since()
        return (False, 0.0) if since is None else (True, max(self._clock() - since, 0.0))

    def configure(self, config: HaConfig) -> None:
        """An HA config from the leader (heartbeat.py's on_ha)."""
        before = self.lease.config
        self.lease.transport_bound = self._transport_bound()
        if (before.enabled, before.fence_after) != (config.enabled, config.fence_after):
            log.info("HA %s by the leader: fence after %.1fs without acknowledgement "
                     "(detection bound %.1fs, %d peers)",
                     "enabled" if config.enabled else "disabled", config.fence_after,
                     config.detect_bound, len(config.peers))
        now = self._clock()
        # HA switched on (a new generation): the lease starts now, even within
        # the hold after a gap (a config read from a stale stream's buffer is
        # no fresh acknowledgement): the leader counts this host only once it
        # has acknowledged this generation (armed, master/ha_config.py), so from
        # a loss after this moment. Counting from an acknowledgement taken
        # while HA was off would fence at once, for nothing.
        newly_on = config.enabled and (not before.enabled
                                       or config.generation != before.generation)
        if now >= self._hold_until or newly_on:
            self.lease.configure(config, now)  # receiving it is an acknowledgement
        else:
            self.lease.config = config

    async def check(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._last_tick is not None and now - self._last_tick > GAP:
                self._hold_until = now + self._transport_bound()
                log.warning("no lease check for %.1fs (stopped or starved): not trusting "
                            "the heartbeat stream for %.1fs", now - self._last_tick,
                            self._hold_until - now)
            self._last_tick = now
            self.lease.transport_bound = self._transport_bound()  # follows the interval
            if self._hears_leader() and now >= self._hold_until:
                self.lease.confirm(now)
                self._rejoin_by = None
            if self._rejoin_by is not None:
                if now >= self._rejoin_by:
                    self._rejoin_by = None
                    await self._fence("not acknowledged again within the rejoin window")
            elif self.lease.due(now):
                await self._lease_ran_out(now)

    async def _lease_ran_out(self, now: float) -> None:
        peers = self.lease.config.peers
        reached, hearing = await self._ask_peers(peers) if peers else (0, 0)
        verdict = liveset_verdict(len(peers), reached, hearing)
        if verdict is Verdict.KEEP:
            log.warning("no acknowledgement from the leader, but %d of %d peers reached and "
                        "none hears it: the master tier is down, not this host; keeping "
                        "the domains", reached, len(peers))
            self.lease.extend(self._clock())
            return
        why = f"{reached} of {len(peers)} peers reached, {hearing} hear the leader"
        if self.lease.held:
            # The master tier may be back and the others reconnected first.
            self._rejoin_by = self._clock() + REJOIN_WINDOW
            log.warning("the liveset no longer says keep (%s): reconnecting to the leader "
                        "now; fencing unless acknowledged within %.1fs", why, REJOIN_WINDOW)
            self._rejoin()
            return
        await self._fence(why)

    async def _fence(self, why: str) -> None:
        self.lease.fence()  # refuse domain operations from now on
        self.fences += 1
        domains = await self._hv.list_domains()
        log.critical("SELF-FENCING host %s: no acknowledgement from the leader for %.1fs "
                     "(%s): destroying %d domains; domain operations are refused until the "
                     "leader acknowledges us", self.host, self.lease.config.fence_after, why,
                     len(domains))
        for domain in domains:
            try:
                await self._hv.destroy(domain.vm_uuid)
            except Exception:  # noqa: BLE001 - destroy the rest regardless
                log.exception("fence: could not destroy domain %s", domain.vm_uuid)

    async def run(self) -> None:
        """Check every TICK until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the guard must keep running
                log.exception("lease check failed")
            await asyncio.sleep(TICK)


def peer_asker(credentials: grpc.ChannelCredentials | None) -> AskPeers:
    """PeerStatus on every peer at once, each within PEER_DEADLINE (ask_liveset)."""
    async def ask_one(uuid: str, address: str) -> bool | None:  # None: not reached
        if not address:  # a witness the leader knows no address of: unreachable
            return None
        try:
            async with open_channel(address, [], credentials, host_dns_name(uuid)) as channel:
                answer = await pb_grpc.SlaveServiceStub(channel).PeerStatus(
                    pb.PeerStatusRequest(), timeout=PEER_DEADLINE)
                return answer.hears_leader
        except grpc.aio.AioRpcError:
            return None

    return lambda peers: ask_liveset(peers, ask_one)


async def ask_liveset(peers: Sequence[tuple[str, str]],
                      ask_one: Callable[[str, str], Awaitable[bool | None]]) -> tuple[int, int]:
    """(reached, hearing the leader), decided as soon as the answers decide
    it: a peer that does not answer must not cost its whole deadline (a host
    watchdog waits for "keep" only briefly). One peer hearing the leader means
    fence; a majority not hearing it means keep (any majority will do: the
    leader's quorum proof, lease.py 3., holds for every one of them)."""
    tasks = [asyncio.ensure_future(ask_one(u, a)) for u, a in peers]
    reached = hearing = unreachable = 0
    try:
        for done in asyncio.as_completed(tasks):
            answer = await done
            if answer is None:
                unreachable += 1
            else:
                reached += 1
                hearing += answer
            if hearing or reached * 2 > len(peers) \
                    or (len(peers) - unreachable) * 2 <= len(peers):
                break
    finally:
        for task in tasks:
            task.cancel()
    return reached, hearing


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """The lease check first in every SlaveService call (PeerStatus aside: a
    peer's question must not wait on our own peer questions); domain
    operations refused with HOST_FENCED while fenced."""

    def __init__(self, guard: SelfFencing) -> None:
        self._guard = guard

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith("/xcp.v1.SlaveService/") \
                or method == PEER_METHOD or handler.request_streaming \
                or handler.response_streaming:
            return handler
        behavior, guard = handler.unary_unary, self._guard

        async def run(request, context):
            await guard.check()
            if guard.fenced and method in DOMAIN_OPERATIONS:
                await errors.abort(context, errors.host_fenced(guard.host))
            return await behavior(request, context)
        return grpc.unary_unary_rpc_method_handler(
            run, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
