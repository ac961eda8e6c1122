"""What a follower sends the leader with a call it passes on (routing.py):
the caller's metadata, minus transport headers and the caller's own
credentials; the client it authenticated named for delegation; never a
delegation header of the caller's own. A call on the leader whose term
ends: passed on if it never acted, HOST_IS_SLAVE if it did; a suspension
stops nothing."""

from __future__ import annotations

import asyncio
import contextvars

import grpc

from xcp_control.master import routing
from xcp_control.master.leadership import CALL, Term
from xcp_control.security.auth import CALLER, Identity
from xcp.v1 import vm_service_pb2 as vs


class Context:
    def __init__(self, metadata) -> None:
        self._metadata = metadata

    def invocation_metadata(self):
        return self._metadata


INCOMING = [(":authority", "m1"), ("user-agent", "grpc-python"), ("x-request", "42"),
            ("authorization", "Bearer secret"), ("xcp-on-behalf-of", "pool-admin:mallory")]


def outgoing(caller: Identity | None) -> list[tuple[str, str]]:
    def run():
        CALLER.set(caller)
        return routing._outgoing(Context(INCOMING), "127.0.0.1:7001")
    return contextvars.copy_context().run(run)


def test_with_tls_the_leader_is_told_whom_the_call_is_for_and_no_credential_passes():
    sent = outgoing(Identity("viewer", "read-only"))
    assert sent == [("x-request", "42"), ("xcp-on-behalf-of", "read-only:viewer"),
                    (routing.PASSED_ON, "127.0.0.1:7001")]


def test_without_tls_metadata_passes_but_a_forged_delegation_never_does():
    sent = outgoing(None)
    assert sent == [("x-request", "42"), ("authorization", "Bearer secret"),
                    (routing.PASSED_ON, "127.0.0.1:7001")]


# -- calls on the leader when its term is suspended or ends ------------------

METHOD = "/xcp.v1.VMService/CreateVM"


class Aborted(Exception):
    def __init__(self, code, details, trailing) -> None:
        super().__init__(details)
        self.code, self.trailing = code, dict(trailing or ())


class CallContext:
    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return 10.0

    async def abort(self, code, details, trailing=()):
        raise Aborted(code, details, trailing)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def leader_router():
    term, clock = Term("m1:7000", 2.0), Clock()
    term.renewed(0.0)
    term.won(epoch=7, now=0.0)
    return term, clock, routing.Router(term, clock, routing.LeaderChannel(None, []))


def handler(behavior):
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=vs.CreateVMRequest.FromString,
        response_serializer=lambda m: m.SerializeToString())


def run_call(router, behavior, then):
    """Start a CreateVM through the router, let it reach its first await,
    run then(), and return what the call ended with."""
    async def go():
        raw = vs.CreateVMRequest(name_label="x").SerializeToString()
        call = asyncio.ensure_future(router._route(handler(behavior), METHOD, raw,
                                                   CallContext(), False, wait=False))
        for _ in range(3):
            await asyncio.sleep(0)
        then()
        try:
            return await asyncio.wait_for(call, 2.0)
        except Aborted as exc:
            return exc
    return asyncio.run(go())


def test_a_call_that_never_acted_is_passed_on_when_the_term_ends(monkeypatch):
    term, clock, router = leader_router()
    forwarded = []

    async def forward(channel, method, raw, context, leader, me):
        forwarded.append((method, vs.CreateVMRequest.FromString(raw).name_label, leader))
        return b"from the new leader"
    monkeypatch.setattr(routing, "_forward_unary", forward)

    async def waits_at_the_gate(request, context):
        await asyncio.Event().wait()
    answer = run_call(router, waits_at_the_gate,
                      lambda: term.leader_seen("m2:7000", 9, now=0.1))
    assert answer == b"from the new leader"
    assert forwarded == [(METHOD, "x", "m2:7000")]


def test_a_call_that_acted_fails_host_is_slave_naming_the_new_leader_when_the_term_ends():
    term, clock, router = leader_router()

    async def acted(request, context):
        CALL.get().acted = True  # as the gate marks it
        await asyncio.Event().wait()
    refused = run_call(router, acted, lambda: term.leader_seen("m2:7000", 9, now=0.1))
    assert isinstance(refused, Aborted) and refused.code == grpc.StatusCode.UNAVAILABLE
    assert "HOST_IS_SLAVE" in str(refused) and "m2:7000" in str(refused)


def test_a_suspension_stops_no_call_in_flight():
    term, clock, router = leader_router()
    go_on = asyncio.Event()

    async def finishes(request, context):
        await go_on.wait()
        return vs.CreateVMRequest(name_label=request.name_label + " done")

    def suspend_then_resume():
        clock.now = 1.6
        term.tick(clock.now)  # renewals failing: not acting, the term still ours
        assert not term.acting(clock.now) and term.suspended(clock.now)
        term.renewed(1.7)
        clock.now = 1.8
        term.tick(clock.now)
        go_on.set()
    answer = run_call(router, finishes, suspend_then_resume)
    assert vs.CreateVMRequest.FromString(answer).name_label == "x done"


def test_a_write_that_finds_the_term_suspended_on_arrival_waits_for_it():
    """It found the leader acting in the interceptor, suspended a moment later."""
    term, clock, router = leader_router()
    clock.now = 1.6
    term.tick(clock.now)

    async def created(request, context):
        return vs.CreateVMRequest(name_label="ran with epoch %d" % term.fence(clock.now))

    def resume():
        term.renewed(1.65)
        clock.now = 1.7
        term.tick(clock.now)
    answer = run_call(router, created, resume)
    assert vs.CreateVMRequest.FromString(answer).name_label == "ran with epoch 7"
