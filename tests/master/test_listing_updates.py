"""ListHosts at 10,000 hosts (issue 10): a changed Host or HostMetrics object
replaces its one entry; only a new, removed or renamed host rebuilds the
answer; reports refresh only the hosts that sent them. Fake clock."""

from __future__ import annotations

import asyncio

from tests.master.world import NOW, World, run, wired
from xcp_control.master.listing import HostListing
from xcp_control.model import copy


def counting(listing: HostListing) -> list[int]:
    rebuilds = [0]
    real = listing._rebuild

    def rebuild() -> None:
        rebuilds[0] += 1
        real()
    listing._rebuild = rebuild  # type: ignore[method-assign]
    return rebuilds


def test_changed_objects_replace_their_entry_and_renames_rebuild(tmp_path):
    async def body(w: World):
        a = await w.add_host("a")
        b = await w.add_host("b")
        listing = wired(HostListing(w.store, w.liveness, w.pool.mirror, lambda: NOW), w)
        rebuilds = counting(listing)
        listing.response()
        assert rebuilds == [1]
        disabled = copy(a)
        disabled.enabled = False
        await w.store.put(disabled)
        metrics = copy(w.store.get("host_metrics", b.metrics))
        metrics.memory_total = 1234
        await w.store.put(metrics)
        answer = listing.response()
        assert rebuilds == [1]
        assert [h.enabled for h in answer.hosts] == [False, True]
        assert answer.host_metrics[1].memory_total == 1234
        renamed = copy(disabled)
        renamed.name_label = "z"
        await w.store.put(renamed)
        assert [h.name_label for h in listing.response().hosts] == ["b", "z"]
        assert rebuilds == [2]
    run(body, tmp_path)


def test_reports_refresh_only_their_hosts_once_per_refresh(tmp_path):
    async def body(w: World):
        now = [NOW]
        a = await w.add_host("a")
        await w.add_host("b")
        listing = wired(HostListing(w.store, w.liveness, w.pool.mirror, lambda: now[0]), w)
        listing.response()
        w.pool.mirror.report(a.uuid, 5, wall=2_000.0, memory_total=8)
        assert listing.response().host_metrics[0].memory_free != 5  # not before a second
        now[0] += 1.0
        answer = listing.response()
        assert answer.host_metrics[0].memory_free == 5
        assert answer.host_metrics[0].last_updated.seconds == 2_000
        assert answer.host_metrics[1].last_updated.seconds == 0  # b never reported
    run(body, tmp_path)


def test_a_rebuild_waits_for_changes_to_settle_then_no_call_pays_it(tmp_path):
    async def body(w: World):
        listing = wired(HostListing(w.store, w.liveness, w.pool.mirror, lambda: NOW, settle=60.0), w)
        rebuilds = counting(listing)
        for name in ("a", "b", "c"):  # a burst of registrations
            await w.add_host(name)
        assert listing._stale and rebuilds == [0]
        timer = listing._warm
        assert timer is not None and timer.when() - asyncio.get_running_loop().time() > 50
        listing._rebuild_if_stale()  # what the timer does once the burst has settled
        assert rebuilds == [1] and not listing._stale
        assert [h.name_label for h in listing.response().hosts] == ["a", "b", "c"]
        assert rebuilds == [1]
        timer.cancel()
    run(body, tmp_path)
