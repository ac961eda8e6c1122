"""`xcp top`'s logic: the pool view from Watch events, forwarded-call rates
from scrapes, with `now` given (no network, no sleeping)."""

from __future__ import annotations

from prometheus_client import generate_latest

from xcp_control.cli.top import CallRates, PoolView, Scrape, gauge_line, metrics_url, parse_scrape
from xcp_control.master.prometheus import MasterMetrics
from xcp.v1 import datamodel_pb2 as dm, event_service_pb2 as ev, host_service_pb2 as hs

H1, H2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
M1, M2 = "aaaaaaaa-1111-4111-8111-111111111111", "bbbbbbbb-2222-4222-8222-222222222222"
VM = "cccccccc-3333-4333-8333-333333333333"


def host_event(uuid, name, metrics, op=ev.ADD):
    return ev.Event(op=op, class_name="host", uuid=uuid,
                    host=dm.Host(uuid=uuid, name_label=name, metrics=metrics))


def metrics_event(uuid, host, live, op=ev.MOD, free=1 << 30):
    return ev.Event(op=op, class_name="host_metrics", uuid=uuid,
                    host_metrics=dm.HostMetrics(uuid=uuid, host=host, live=live,
                                                memory_free=free, memory_total=4 << 30))


def snapshot() -> PoolView:
    view = PoolView()
    for event in (host_event(H1, "host1", M1), host_event(H2, "host2", M2),
                  metrics_event(M1, H1, True, ev.ADD), metrics_event(M2, H2, True, ev.ADD),
                  ev.Event(op=ev.ADD, class_name="vm", uuid=VM,
                           vm=dm.VM(uuid=VM, power_state=dm.RUNNING, resident_on=H2)),
                  ev.Event(op=ev.SYNC)):
        view.apply(event, now=100.0)
    return view


def test_the_snapshot_fills_the_view_and_flips_nothing():
    view = snapshot()
    assert view.synced and not view.flips
    header, rows = view.host_table(now=100.0)
    assert [r[0] for r in rows] == ["host1", "host2"]
    assert [r[2] for r in rows] == ["true", "true"]
    assert [r[-1] for r in rows] == ["0", "1"]  # host2 runs the VM
    assert view.summary() == "2 hosts, 2 live; 1 VMs, 1 running"


def test_a_live_change_is_a_flip_and_other_changes_are_not():
    view = snapshot()
    view.apply(metrics_event(M2, H2, True, free=1 << 20), now=101.0)  # memory only
    view.apply(metrics_event(M2, H2, False), now=102.0)
    view.apply(metrics_event(M2, H2, True), now=103.0)
    assert [(f.host, f.live, f.at) for f in view.flips] == [(H2, True, 103.0),
                                                             (H2, False, 102.0)]
    assert len(view.flip_lines()) == 2 and "host2" in view.flip_lines()[0]


def test_a_deleted_host_leaves_the_table():
    view = snapshot()
    view.apply(host_event(H1, "host1", M1, op=ev.DEL), now=101.0)
    assert [r[0] for r in view.host_table(now=101.0)[1]] == ["host2"]


def test_list_hosts_refreshes_reports_and_memory_but_never_live():
    view = snapshot()
    fresh = dm.HostMetrics(uuid=M1, host=H1, live=False, memory_free=7, memory_total=9)
    fresh.last_updated.FromSeconds(99)
    view.refresh(hs.ListHostsResponse(host_metrics=[fresh]))
    held = view.metrics[M1]
    assert (held.live, held.memory_free, held.last_updated.seconds) == (True, 7, 99)
    assert view.host_table(now=100.0)[1][0][3] == "1.0s ago"


def test_rates_need_two_scrapes_and_count_a_restart_from_zero():
    rates = CallRates()
    first = rates.lines(Scrape({("StartDomain", "OK"): 10}, {}, {}), now=0.0)
    assert first == ["forwarded calls: 10, OK 10"]
    second = rates.lines(Scrape({("StartDomain", "OK"): 14,
                                 ("ShutdownDomain", "HOST_OFFLINE"): 2}, {}, {}), now=2.0)
    assert second == ["forwarded calls: 16, OK 14 (2.0/s)",
                      "  errors: HOST_OFFLINE 2 (1.0/s)"]
    restarted = rates.lines(Scrape({("StartDomain", "OK"): 3}, {}, {}), now=3.0)
    assert restarted == ["forwarded calls: 3, OK 3 (3.0/s)"]


def test_a_real_scrape_parses():
    metrics = MasterMetrics()
    metrics.observe_forwarded("StartDomain", "OK", 0.1)
    metrics.observe_forwarded("PauseDomain", "CANNOT_CONTACT_HOST", 2.0)
    got = parse_scrape(generate_latest(metrics.registry).decode())
    assert got.calls == {("StartDomain", "OK"): 1, ("PauseDomain", "CANNOT_CONTACT_HOST"): 1}


def test_gauge_line_shows_causes_lag_and_streams():
    got = Scrape({}, {"stream_ended": 1, "reaper": 0},
                 {"xcp_event_loop_lag_seconds": 0.012, "xcp_heartbeat_streams": 3})
    assert gauge_line(got) == "down since start: stream_ended 1; event-loop lag 12 ms; " \
                              "3 heartbeat streams"


def test_metrics_url_takes_host_port_or_a_url():
    assert metrics_url("127.0.0.1:9100") == "http://127.0.0.1:9100/metrics"
    assert metrics_url("http://m:1/metrics") == "http://m:1/metrics"
    assert metrics_url("") == ""


def test_bad_options_are_usage_errors():
    from xcp_control.cli import app
    for bad in (["--interval", "0"], ["--interval", "x"], ["--iterations", "-1"]):
        assert app.main(["top", *bad]) == 2
