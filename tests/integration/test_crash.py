"""Crash safety: kill -9 the master in the middle of a burst of concurrent CreateVM
calls, restart it on the same database file (and port): every VM whose CreateVM was
answered is there, and the database opens cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

import grpc

from tests.support.clients import channel as open_channel, stubs
from tests.support.daemons import MasterProcess
from xcp.v1 import vm_service_pb2 as vs
from xcp.v1 import vm_service_pb2_grpc

CLIENTS = 32  # concurrent CreateVM calls in flight
KILL_AFTER = 300  # answered calls before the kill -9
ROUNDS = 2  # crash, restart, crash again, restart


async def burst_then_kill(address: str, pid: int, tag: str) -> tuple[dict[str, str], list]:
    """CLIENTS callers create VMs flat out; after KILL_AFTER answers the master gets
    SIGKILL while calls are in flight. Returns {uuid: name} of every answered call and
    the status codes the callers ended on."""
    answered: dict[str, str] = {}
    endings: list = []
    killed = asyncio.Event()

    async with grpc.aio.insecure_channel(address) as ch:
        stub = vm_service_pb2_grpc.VMServiceStub(ch)
        await asyncio.wait_for(ch.channel_ready(), 10)

        async def caller(i: int) -> None:
            n = 0
            while True:
                name = f"{tag}-{i}-{n}"
                n += 1
                try:
                    vm = await stub.CreateVM(
                        vs.CreateVMRequest(name_label=name, memory=1 << 30, vcpus=1),
                        timeout=10)
                except grpc.aio.AioRpcError as exc:
                    endings.append(exc.code())
                    return
                answered[vm.uuid] = vm.name_label
                assert vm.name_label == name
                if len(answered) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    os.kill(pid, signal.SIGKILL)

        await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(CLIENTS))), 60)
    assert killed.is_set(), "the burst ended before the kill"
    return answered, endings


def stored_vms(address: str) -> dict[str, str]:
    with open_channel(address) as ch:
        vms = stubs(ch).vms.ListVMs(vs.ListVMsRequest(), timeout=30).vms
    return {vm.uuid: vm.name_label for vm in vms}


def test_answered_creates_survive_kill_9(tmp_path):
    db = tmp_path / "pool.db"
    master = MasterProcess(db, log_dir=tmp_path).start()
    answered: dict[str, str] = {}
    try:
        for round_ in range(ROUNDS):
            got, endings = asyncio.run(burst_then_kill(master.address, master.pid, f"r{round_}"))
            assert master.kill(signal.SIGKILL) == -signal.SIGKILL
            # Every caller was cut off by the crash, i.e. calls were in flight.
            assert len(endings) == CLIENTS
            assert set(endings) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                    grpc.StatusCode.INTERNAL}, endings
            answered.update(got)

            # Restart on the same file and the same port.
            master = MasterProcess(db, listen=master.address, log_dir=tmp_path).start()
            stored = stored_vms(master.address)
            missing = set(answered) - set(stored)
            assert not missing, f"{len(missing)} answered CreateVM calls lost"
            assert all(stored[u] == name for u, name in answered.items())
            # Unanswered calls may or may not have landed, but nothing else did.
            assert all(name.startswith(("r0-", "r1-")) for name in stored.values())
            assert "Traceback" not in master.stderr_text()
    finally:
        master.stop()
    assert master.returncode == 0

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (count,) = conn.execute("SELECT count(*) FROM objects WHERE class='vm'").fetchone()
        assert count >= len(answered) >= ROUNDS * KILL_AFTER
    finally:
        conn.close()
