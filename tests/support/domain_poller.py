"""The "never twice" observer as a process: SlaveService.ListDomains on every
given slave every interval, each sighting of a domain written as one line
`host vm sent received` (seconds on the monotonic clock, which every process
on this machine shares, network namespaces included).

Run inside a test host's network namespace (TestHost.run) it keeps seeing that
host's slaves while the host is partitioned from the rest of the pool, which a
poller in the root namespace cannot: together they look at every host
throughout the fault. Bounded: it stops after --duration seconds, on SIGTERM,
or when its output cannot be written.

    python -m tests.support.domain_poller --out FILE [--interval S] [--duration S] \\
        UUID=HOST:PORT ...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from xcp.v1 import slave_service_pb2 as sl, slave_service_pb2_grpc

ANSWER_DEADLINE = 0.2  # seconds: a stopped or cut-off slave costs one poll this much


@dataclass(frozen=True)
class Sighting:
    host: str
    vm: str
    sent: float
    received: float

    def line(self) -> str:
        return f"{self.host} {self.vm} {self.sent:.6f} {self.received:.6f}\n"

    @classmethod
    def parse(cls, line: str) -> "Sighting":
        host, vm, sent, received = line.split()
        return cls(host, vm, float(sent), float(received))


def read_sightings(path: Path) -> list[Sighting]:
    if not path.exists():
        return []
    return [Sighting.parse(line) for line in path.read_text().splitlines() if line.strip()]


class Sightings(list):
    """What one or more pollers saw."""

    def on(self, host: str, vm: str) -> list[Sighting]:
        return [s for s in self if s.host == host and s.vm == vm]

    def hosts_of(self, vm: str) -> set[str]:
        return {s.host for s in self if s.vm == vm}

    def assert_never_twice(self, vm: str, first: str, then: str) -> None:
        """`vm` ran on `first`, then on `then` (to the end): no sighting on
        `first` was asked for after one on `then` had been answered."""
        later = self.on(then, vm)
        if not later:
            return
        earliest = min(s.received for s in later)
        twice = [s for s in self.on(first, vm) if s.sent > earliest]
        assert not twice, f"VM {vm} seen on {first} after it ran on {then}: {twice[:3]}"


class PollerProcess:
    """This module as a child process polling `slaves` (objects with .uuid and
    .address), inside `host`'s namespace when given; a context manager that
    always stops it."""

    def __init__(self, slaves, host=None, interval: float = 0.05,
                 duration: float = 120.0) -> None:
        fd, name = tempfile.mkstemp(prefix="sightings-", suffix=".txt")
        os.close(fd)
        self._out = Path(name)
        argv = [sys.executable, "-m", "tests.support.domain_poller", "--out", name,
                "--interval", str(interval), "--duration", str(duration),
                *(f"{s.uuid}={s.address}" for s in slaves)]
        self._argv = host.exec_argv(argv) if host is not None else argv
        self._proc: subprocess.Popen | None = None
        self.rounds = 0
        self.sightings = Sightings()  # read when it stops

    def __enter__(self) -> "PollerProcess":
        repo = Path(__file__).resolve().parents[2]
        self._proc = subprocess.Popen(self._argv, cwd=repo, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        proc = self._proc
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        self.rounds = next((int(line.split()[1]) for line in (out or "").splitlines()
                            if line.startswith("rounds ")), 0)
        self.sightings = Sightings(read_sightings(self._out))
        self._out.unlink(missing_ok=True)


def poll(slaves: dict[str, str], out: Path, interval: float, duration: float,
         stop: threading.Event) -> int:
    """Poll until stopped or `duration` passed; the number of rounds."""
    channels = {uuid: grpc.insecure_channel(address) for uuid, address in slaves.items()}
    stubs = {uuid: slave_service_pb2_grpc.SlaveServiceStub(c) for uuid, c in channels.items()}
    deadline, rounds = time.monotonic() + duration, 0
    try:
        with out.open("a", buffering=1) as sink:
            while not stop.is_set() and time.monotonic() < deadline:
                for uuid, stub in stubs.items():
                    sent = time.monotonic()
                    try:
                        reply = stub.ListDomains(sl.ListDomainsRequest(),
                                                 timeout=ANSWER_DEADLINE)
                    except grpc.RpcError:
                        continue  # stopped, cut off or fenced mid-call: no sighting
                    received = time.monotonic()
                    for domain in reply.domains:
                        sink.write(Sighting(uuid, domain.vm_uuid, sent, received).line())
                rounds += 1
                stop.wait(interval)
    finally:
        for channel in channels.values():
            channel.close()
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("slaves", nargs="+", metavar="UUID=HOST:PORT")
    args = parser.parse_args(argv)
    slaves = dict(s.split("=", 1) for s in args.slaves)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rounds = poll(slaves, args.out, args.interval, min(args.duration, 600.0), stop)
    print(f"rounds {rounds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
