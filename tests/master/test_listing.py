"""ListHosts' maintained answer, on a fake clock over a real store."""

from __future__ import annotations

from tests.master.world import NOW, World, run, wired
from xcp_control.master.listing import HostListing



def test_flips_refresh_one_entry_and_beats_refresh_once_a_second(tmp_path):
    async def body(w: World):
        now = [NOW]
        a = await w.add_host("a")
        b = await w.add_host("b")
        w.pool.mirror.report(a.uuid, 7, wall=1_000.0, memory_total=8)
        listing = wired(HostListing(w.store, w.liveness, w.pool.mirror, lambda: now[0]), w)
        first = listing.response()
        assert [h.name_label for h in first.hosts] == ["a", "b"]
        assert first.host_metrics[0].last_updated.seconds == 1_000
        w.liveness.mark_down(b.uuid)  # a flip shows at once
        assert [m.live for m in listing.response().host_metrics] == [True, False]
        w.pool.mirror.report(a.uuid, 7, wall=1_000.5)  # a beat: shown within a second
        assert listing.response().host_metrics[0].last_updated.nanos == 0
        now[0] += 1.0
        assert listing.response().host_metrics[0].last_updated.nanos == 500_000_000
    run(body, tmp_path)


def test_a_new_host_in_the_store_rebuilds_the_answer(tmp_path):
    async def body(w: World):
        listing = wired(HostListing(w.store, w.liveness, w.pool.mirror, lambda: NOW), w)
        assert list(listing.response().hosts) == []
        c = await w.add_host("c")
        answer = listing.response()
        assert [h.uuid for h in answer.hosts] == [c.uuid]
        assert answer.host_metrics[0].host == c.uuid
    run(body, tmp_path)
