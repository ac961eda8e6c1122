"""A bare grpc.aio forwarder, for bench_forwarding's overhead section: what
forwarding costs with nothing of ours on the path (no locks, no power-state
check, no liveness, no translation), so that our master's figures can be read
against it side by side.

    python benchmarks/bare_forwarder.py --slave HOST:PORT [--db PATH]

Serves VMService.PauseVM / UnpauseVM on 127.0.0.1 (port printed as
"listening on HOST:PORT") and forwards each as PauseDomain / UnpauseDomain(vm_uuid
= the request's uuid) on one channel to the slave. With --db, each answer
waits for the new power state to be committed through our SqliteStore (group
commit, WAL, synchronous=FULL): the durable write alone, added to the bare path.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from xcp.v1 import datamodel_pb2 as dm, slave_service_pb2 as sl  # noqa: E402
from xcp.v1 import slave_service_pb2_grpc as sl_grpc, vm_service_pb2_grpc as vs_grpc  # noqa: E402
from xcp_control.master.sqlite_store import SqliteStore  # noqa: E402


class Bare(vs_grpc.VMServiceServicer):
    def __init__(self, slave: sl_grpc.SlaveServiceStub, store: SqliteStore | None) -> None:
        self._slave = slave
        self._store = store

    async def _forward(self, call, request, state: int, context) -> dm.VM:
        try:
            await call(request, timeout=10)
        except grpc.aio.AioRpcError as exc:  # the slave's own error, passed on as it is
            await context.abort(exc.code(), exc.details(), tuple(exc.trailing_metadata() or ()))
        vm = dm.VM(uuid=request.vm_uuid, power_state=state)
        if self._store is not None:
            await self._store.put(vm)
        return vm

    async def PauseVM(self, request, context):
        return await self._forward(self._slave.PauseDomain,
                                   sl.PauseDomainRequest(vm_uuid=request.uuid), dm.PAUSED,
                                   context)

    async def UnpauseVM(self, request, context):
        return await self._forward(self._slave.UnpauseDomain,
                                   sl.UnpauseDomainRequest(vm_uuid=request.uuid), dm.RUNNING,
                                   context)


async def main(a: argparse.Namespace) -> None:
    store = await SqliteStore(a.db).open() if a.db else None
    channel = grpc.aio.insecure_channel(a.slave)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)])
    vs_grpc.add_VMServiceServicer_to_server(Bare(sl_grpc.SlaveServiceStub(channel), store),
                                            server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slave", required=True)
    p.add_argument("--db", default="")
    asyncio.run(main(p.parse_args()))
