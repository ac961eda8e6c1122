"""The fault tests' lab: masters for a test module, and one test's slaves.

A `Lab` owns everything one test module starts: masters (cached by their settings, so
a module shares them), an optional `TestHost` (a network namespace whose slaves can be
partitioned), and the clients and Watch recorders of each master. A `Case` (one test)
starts slaves and kills them at its end, SIGCONT first, and heals the test host.
Every wait here is bounded, every process is killed on the way out (and at interpreter
exit, should a fixture never run: tests/support/processes.py), and only loopback or the
test host's addresses are used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.support.daemons import MasterProcess, SlaveProcess, master_args
from tests.support.netns import TestHost
from tests.support.observers import Client, Watcher


@dataclass
class Master:
    """A started master with its client and its Watch recorder."""

    process: MasterProcess
    client: Client
    watcher: Watcher
    settings: dict

    @property
    def address(self) -> str:
        return self.process.address

    def close(self) -> None:
        self.watcher.close()
        self.client.close()
        self.process.stop()


class Lab:
    """Masters (cached by settings) for one module, on loopback or on a test host's
    root-side address; everything is stopped by close()."""

    def __init__(self, tmp: Path, host: TestHost | None = None) -> None:
        self.tmp = tmp
        self.host = host
        self._masters: dict[tuple, Master] = {}
        self._others: list[Master] = []
        self._count = 0

    @property
    def listen_ip(self) -> str:
        return self.host.root_ip if self.host is not None else "127.0.0.1"

    def master(self, **settings: float) -> Master:
        """A running master with these settings, shared with the rest of the module."""
        key = tuple(sorted(settings.items()))
        found = self._masters.get(key)
        if found is None or not found.process.running:
            found = self._masters[key] = self.start_master(**settings)
            self._others.remove(found)
        return found

    def start_master(self, db: Path | None = None, listen: str | None = None,
                     launcher: tuple[str, ...] = (), **settings: float) -> Master:
        """A new master of its own (the caller may kill it); stopped by close().
        `launcher` replaces the console script (a benchmark's other checkout)."""
        self._count += 1
        db = db or self.tmp / f"pool-{self._count}.db"
        proc = MasterProcess(db, listen=listen or f"{self.listen_ip}:0",
                             extra_args=master_args(**settings), log_dir=self.tmp,
                             launcher=launcher)
        proc.start()
        try:
            client = Client(proc.address)
            watcher = Watcher(proc.address)
        except BaseException:
            proc.stop()
            raise
        master = Master(proc, client, watcher, settings)
        self._others.append(master)
        return master

    def close(self) -> None:
        for master in [*self._masters.values(), *self._others]:
            with contextlib.suppress(Exception):
                master.close()
        self._masters.clear()
        self._others.clear()

    @contextlib.contextmanager
    def case(self) -> Iterator["Case"]:
        case = Case(self)
        try:
            yield case
        except BaseException:
            print(case.diagnostics())  # shown with the failure report
            raise
        finally:
            case.close()

    def next_name(self) -> str:
        self._count += 1
        return f"slave{self._count}-{os.getpid()}"


class Case:
    """One test's slaves: started ready (live on their master), killed at the end."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.slaves: list[tuple[SlaveProcess, Master]] = []

    def slave(self, master: Master, *extra: str, wait_live: bool = True,
              outside: bool = False) -> SlaveProcess:
        """A slave inside the lab's test host (when it has one), or with
        `outside` beside it, on the root-side address: a peer the test host's
        slave reaches until it is partitioned."""
        name = self.lab.next_name()
        state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.lab.tmp))
        host = None if outside else self.lab.host
        listen = f"{self.lab.listen_ip}:0" if outside and self.lab.host else None
        slave = SlaveProcess(master.address, state, name, self.lab.tmp, extra_args=extra,
                             host=host, listen=listen)
        self.slaves.append((slave, master))
        slave.start()
        if wait_live:
            try:
                master.client.wait_live(slave.uuid, True, timeout=10)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{slave.log(tail=40)}\n"
                                     f"{master.process.stderr_text()[-3000:]}") from None
        return slave

    def logs(self) -> str:
        return "\n".join(s.log(tail=40) for s, _ in self.slaves)

    def diagnostics(self) -> str:
        masters = {id(m): m for _, m in self.slaves}.values()
        tails = [f"--- master {m.address} stderr (tail)\n{m.process.stderr_text()[-4000:]}"
                 for m in masters]
        return "\n".join([self.logs(), *tails])

    def close(self) -> None:
        if self.lab.host is not None:
            with contextlib.suppress(Exception):
                self.lab.host.heal()
        for slave, master in self.slaves:
            slave.kill()
        for slave, master in self.slaves:
            if slave.uuid and master.process.running:
                with contextlib.suppress(Exception):
                    master.client.wait_live(slave.uuid, False, timeout=5)
                    master.client.forget(slave.uuid)
