"""The master's side of heartbeat streams over a real store: no network, no sleeping."""

from __future__ import annotations

import pytest

from tests.master.world import NOW, World, new_uuid, run
from xcp_control.master.admission import LoopLag
from xcp_control.errors import XcpError
from xcp_control.master.sessions import HeartbeatSessions
from xcp_control.master.host_metrics import MetricsMirror
from xcp.v1 import liveness_service_pb2 as pb, slave_service_pb2 as sl


def sessions(world: World, loop_lag: LoopLag | None = None) -> tuple[HeartbeatSessions, list]:
    mirror = MetricsMirror(world.store, world.liveness, clock=lambda: NOW, write_interval=30.0)
    hb = HeartbeatSessions(world.store, world.liveness, mirror, 1.0, clock=lambda: NOW,
                           loop_lag=loop_lag, wall_clock=lambda: 1.7e9)
    world.liveness.add_listener(hb.on_flip)
    reports: list = []
    hb.add_domains_listener(lambda host, domains: reports.append((host, list(domains))))
    return hb, reports


def hello(host: str, digest: str = "d0") -> pb.Hello:
    return pb.Hello(host_uuid=host, name_label="h", address="127.0.0.1:9", memory_total=8,
                    memory_free=8, domains_digest=digest, enabled=True)


def test_unknown_host_registers_and_goes_live(tmp_path):
    async def body(world: World):
        hb, reports = sessions(world)
        host = new_uuid()
        session, reply = await hb.hello(hello(host))
        assert reply.interval_ms == 1000 and reply.domains_ack == "d0"
        record = world.store.get("host", host)
        assert record.address == "127.0.0.1:9"
        assert world.store.get("host_metrics", record.metrics).host == host
        assert world.liveness.is_live(host)
        assert reports == [(host, [])]
    run(body, tmp_path)


def test_steady_beats_need_no_answer_and_changed_lists_are_acked(tmp_path):
    async def body(world: World):
        hb, reports = sessions(world)
        session, _ = await hb.hello(hello(new_uuid()))
        assert hb.beat(session, pb.Beat(seq=1, domains_digest="d0")) is None
        asked = hb.beat(session, pb.Beat(seq=2, domains_digest="d1"))
        assert asked.send_domains
        domain = sl.Domain(vm_uuid=new_uuid())
        ack = hb.beat(session, pb.Beat(seq=3, domains_digest="d1", domains_included=True,
                                       domains=[domain]))
        assert ack.domains_ack == "d1" and reports[-1][1] == [domain]
    run(body, tmp_path)


def test_a_host_back_from_not_live_must_resend_its_domains(tmp_path):
    """Regression: after DeclareDead (or the reaper), the digest the master held
    is stale: the next beat asks for the full list, so reconciliation runs."""
    async def body(world: World):
        hb, _ = sessions(world)
        host = new_uuid()
        session, _ = await hb.hello(hello(host))
        world.liveness.mark_down(host)
        assert hb.beat(session, pb.Beat(seq=1, domains_digest="d0")).send_domains
    run(body, tmp_path)


def test_only_the_newest_stream_speaks_for_a_host(tmp_path):
    async def body(world: World):
        hb, _ = sessions(world)
        host = new_uuid()
        old, _ = await hb.hello(hello(host))
        new, _ = await hb.hello(hello(host))
        hb.end(old, goodbye=False)
        assert world.liveness.is_live(host)
        assert hb.beat(old, pb.Beat(seq=9, domains_digest="d0")) is None
        hb.end(new, goodbye=True)
        assert not world.liveness.is_live(host)
    run(body, tmp_path)


def test_new_streams_are_refused_too_busy_while_the_loop_lags(tmp_path):
    async def body(world: World):
        lag = LoopLag(limit=0.5)
        hb, _ = sessions(world, loop_lag=lag)
        hb.admit()  # a punctual loop admits
        for _ in range(5):
            lag.observe(expected=0.0, now=2.0)
        with pytest.raises(XcpError) as refused:
            hb.admit()
        assert refused.value.reason == "TOO_BUSY" and refused.value.code.name == \
            "RESOURCE_EXHAUSTED"
    run(body, tmp_path)


def test_reports_of_a_host_without_its_hypervisor_leave_its_domains_alone(tmp_path):
    """A libvirt slave whose libvirtd is down (or a slave restarted meanwhile,
    which has never read its list) must not make the master halt its VMs: its
    reports are not domain reports until the hypervisor is back."""
    async def body(world: World):
        hb, reports = sessions(world)
        host = new_uuid()
        down = hello(host, digest="empty")
        down.hypervisor_unavailable = True
        session, reply = await hb.hello(down)
        assert reports == [] and reply.domains_ack == ""
        assert world.liveness.is_live(host)  # still heartbeating: live
        assert hb.beat(session, pb.Beat(seq=1, domains_digest="empty", domains_included=True,
                                        hypervisor_unavailable=True)) is None
        assert reports == []
        back = hb.beat(session, pb.Beat(seq=2, domains_digest="d1"))
        assert back.send_domains  # back: the master asks for the list
        domain = sl.Domain(vm_uuid=new_uuid())
        hb.beat(session, pb.Beat(seq=3, domains_digest="d1", domains_included=True,
                                 domains=[domain]))
        assert reports == [(host, [domain])]
    run(body, tmp_path)


def test_a_report_answering_report_now_vouches_only_from_the_current_stream(tmp_path):
    async def body(world: World):
        hb, _ = sessions(world)
        vouches: list = []
        hb.vouch_listener = lambda host, seconds: vouches.append((host, seconds))
        host = new_uuid()
        old, _ = await hb.hello(hello(host))
        hb.beat(old, pb.Beat(seq=1, domains_digest="d0"))
        assert vouches == []  # an ordinary report says nothing
        hb.beat(old, pb.Beat(seq=2, domains_digest="d0", connected_for_ms=42_500))
        assert vouches == [(host, 42.5)]
        new, _ = await hb.hello(hello(host))  # a newer stream supersedes the old one
        hb.beat(old, pb.Beat(seq=3, domains_digest="d0", connected_for_ms=99_000))
        assert vouches == [(host, 42.5)]
    run(body, tmp_path)


def test_a_hello_that_says_it_fenced_is_told_before_its_domains_are_taken(tmp_path):
    async def body(world: World):
        hb, reports = sessions(world)
        told: list = []

        async def fenced(host):
            told.append((host, len(reports)))
        hb.fenced_listener = fenced
        host = new_uuid()
        await hb.hello(hello(host))
        assert told == []
        message = hello(host)
        message.fenced = True
        await hb.hello(message)
        assert told == [(host, 1)]  # before the second Hello's list was taken
        assert len(reports) == 2
    run(body, tmp_path)
