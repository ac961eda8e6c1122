"""What witness lists cost the leader (master/ha_config.py, ha_witness.py), in
process, no network: HA switched on with N hosts already connected (every
list chosen, written, pushed, then acknowledged), a host leaving (its about K
holders get a replacement), a host joining. A real SQLite store (group
commit), the announcer as the master wires it, pushes counted instead of sent.

    flock /work/heavy.lock .venv/bin/python benchmarks/bench_witness.py --hosts 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
import uuid as uuid_module
from pathlib import Path

from xcp_control.master.ha_config import HaAnnouncer
from xcp_control.master.liveness import Liveness
from xcp_control.master.pool_ha import PoolHa
from xcp_control.master.sqlite_store import SqliteStore
from xcp_control.master.store import Put
from xcp.v1 import datamodel_pb2 as dm, liveness_service_pb2 as pb


def host_uuid(i: int) -> str:
    return str(uuid_module.UUID(int=i + 1, version=4))


async def measure(n: int, db: Path) -> dict:
    store = await SqliteStore(str(db)).open()
    try:
        liveness = Liveness(report_deadline=30.0, grace=0.0, started_at=0.0)
        pool_ha = PoolHa(store, liveness)
        ha = HaAnnouncer(store, pool_ha, detect_bound=3.0, transport_bound=1.5)
        sent: list[tuple[str, pb.HeartbeatResponse]] = []
        hosts = [host_uuid(i) for i in range(n)]
        ha.push = lambda host, message: sent.append((host, message))
        ha.open_hosts = lambda: hosts
        store.add_listener(ha.on_changes)
        for start in range(0, n, 1000):
            await store.commit([Put(dm.Host(uuid=h, name_label=h[:8], enabled=True,
                                            address=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:1"))
                                for i, h in enumerate(hosts[start:start + 1000], start)])
        for h in hosts:  # their streams are open (HA off: no list)
            ha.keep(h, pb.Hello(host_uuid=h))
            ha.fill(h, pb.HeartbeatResponse())
        await ha.settled(600)
        result: dict = {"hosts": n}

        def phase(name: str, t0: float, writes0: int, sent0: int) -> None:
            batch = sent[sent0:]
            result[name] = {"s": round(time.perf_counter() - t0, 3),
                            "writes": ha.writes - writes0, "pushes": len(batch),
                            "lists": sum(1 for _, m in batch if m.witness_version),
                            "bytes": sum(m.ByteSize() for _, m in batch)}

        async def ack_all(since: int) -> None:
            for host, message in sent[since:]:
                version = message.witness_version or \
                    store.get("host", host).ha_witness_version
                ha.on_ack(host, pb.Beat(ha_ack=True, ha_witness_version=version,
                                        ha_generation=message.ha_generation))
            await ha.settled(600)

        t0, w0, s0 = time.perf_counter(), ha.writes, len(sent)
        await pool_ha.configure(True, 0)
        await ha.settled(600)
        phase("switch_on", t0, w0, s0)
        t0, w0, s1 = time.perf_counter(), ha.writes, len(sent)
        await ack_all(s0)
        phase("acknowledged", t0, w0, s1)
        result["armed"] = sum(ha.armed(h) for h in hosts)
        # A host leaves: the hosts holding it get a replacement.
        t0, w0, s0 = time.perf_counter(), ha.writes, len(sent)
        await store.delete("host", hosts[0])
        await ha.settled(600)
        phase("host_leaves", t0, w0, s0)
        await ack_all(s0)
        # A host joins: its own list only, written with its registration.
        newcomer = host_uuid(n + 10)
        record = dm.Host(uuid=newcomer, name_label="new", enabled=True, address="10.99.0.1:1")
        t0, w0, s0 = time.perf_counter(), ha.writes, len(sent)
        ha.keep(newcomer, pb.Hello(host_uuid=newcomer))
        ha.on_hello(newcomer, pb.Hello(host_uuid=newcomer), record)
        await store.put(record)
        answer = ha.fill(newcomer, pb.HeartbeatResponse())
        await ha.settled(600)
        phase("host_joins", t0, w0, s0)
        result["host_joins"]["answer_witnesses"] = len(answer.peers)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        return result
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=1000)
    a = p.parse_args(argv)
    if not 2 <= a.hosts <= 50_000:
        p.error("hosts 2..50000")
    with tempfile.TemporaryDirectory(prefix="bench-witness-") as tmp:
        result = asyncio.run(measure(a.hosts, Path(tmp) / "pool.db"))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
