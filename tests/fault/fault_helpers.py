"""Helpers for the fault tests: real slaves, a lab of masters, clients, a Watch recorder.

A `Lab` owns everything one test module starts: masters (cached by their settings, so
a module shares them), an optional `TestHost` (a network namespace whose slaves can be
partitioned), and the clients and Watch recorders of each master. A `Case` (one test)
starts slaves and kills them at its end, SIGCONT first, and heals the test host.
Every wait here is bounded, every process is killed on the way out (and at interpreter
exit, should a fixture never run), and only loopback or the test host's addresses are
used.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grpc

from tests.support.netns import TestHost
from tests.support.processes import MasterProcess
from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import event_service_pb2_grpc
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import host_service_pb2_grpc
from xcp.v1 import slave_service_pb2 as sl
from xcp.v1 import slave_service_pb2_grpc
from xcp.v1 import vm_service_pb2 as vs
from xcp.v1 import vm_service_pb2_grpc
from xcp_control.errors import error_info

GiB = 1024**3
SLAVE_BIN = Path(sys.executable).parent / "xcp-slave"
SLAVE_LINE = re.compile(r"xcp-slave: host (?P<uuid>[0-9a-f-]{36}) listening on (?P<addr>\S+)")
START_TIMEOUT = 20.0  # seconds for a process to print its listening line
CALL_TIMEOUT = 15.0  # client deadline of forwarded calls: above every bound we assert
STATE_NAMES = {dm.HALTED: "HALTED", dm.RUNNING: "RUNNING", dm.PAUSED: "PAUSED"}

_live_procs: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live_procs)
        _live_procs.clear()
    for proc in procs:
        _hard_kill(proc)


atexit.register(_kill_leftovers)


def _hard_kill(proc: subprocess.Popen) -> None:
    """SIGCONT (a stopped process cannot die of SIGKILL until it runs) then SIGKILL, reap."""
    if proc.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               step: float = 0.02) -> Any:
    """The first truthy value of predicate(), polled every `step` s for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(step)


def reason_of(exc: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call, or `grpc:<CODE>` when it carries none."""
    info = error_info(exc)
    return info.reason if info is not None else f"grpc:{exc.code().name}"


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, str(state))


# ---------------------------------------------------------------- slaves


class SlaveProcess:
    """One `xcp-slave`, on loopback or inside a TestHost; uuid and address once started."""

    def __init__(self, master: str, state_dir: Path, name: str, log_dir: Path,
                 host: TestHost | None = None, extra: Sequence[str] = ()) -> None:
        self.master = master
        self.state_dir = state_dir
        self.name = name
        self.log_dir = log_dir
        self.host = host
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.uuid = ""
        self.address = ""
        self.stderr_path: Path | None = None
        self.stopped = False  # SIGSTOPped by us

    @property
    def argv(self) -> list[str]:
        ip = self.host.host_ip if self.host is not None else "127.0.0.1"
        return [str(SLAVE_BIN), "--master", self.master, "--listen", f"{ip}:0",
                "--name", self.name, "--state-dir", str(self.state_dir), *self.extra]

    def start(self, timeout: float = START_TIMEOUT) -> "SlaveProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        fd, name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".stderr", dir=self.log_dir)
        self.stderr_path = Path(name)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = self.host.exec_argv(self.argv) if self.host is not None else self.argv
        with os.fdopen(fd, "wb") as stderr:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=stderr, env=env, text=True,
                                         start_new_session=True)
        with _live_lock:
            _live_procs.add(self.proc)
        self.stopped = False
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_drain, args=(self.proc, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"{self.name} said nothing for {timeout}s\n{self.log()}")
            if line is None:
                self.kill()
                raise AssertionError(f"{self.name} exited before serving\n{self.log()}")
            if match := SLAVE_LINE.search(line):
                self.uuid, self.address = match["uuid"], match["addr"]
                return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.running, f"{self.name} is not running"
        os.kill(self.pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (the slave says goodbye) and reap; the exit status."""
        if self.stopped:
            self.thaw()
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGCONT, SIGKILL, reap: safe in any state, idempotent."""
        if self.proc is not None:
            _hard_kill(self.proc)
            with _live_lock:
                _live_procs.discard(self.proc)
        self.stopped = False

    def log(self, tail: int = 40) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} stderr (last {tail} lines)\n" + "\n".join(lines[-tail:])

    def domains(self, timeout: float = 5.0) -> dict[str, int]:
        """vm uuid -> state of the domains the slave itself reports (SlaveService, direct)."""
        with grpc.insecure_channel(self.address) as ch:
            stub = slave_service_pb2_grpc.SlaveServiceStub(ch)
            reply = stub.ListDomains(sl.ListDomainsRequest(), timeout=timeout,
                                     wait_for_ready=True)
        return {d.vm_uuid: d.state for d in reply.domains}


def _drain(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


# ---------------------------------------------------------------- clients


@dataclass
class Outcome:
    """How a call ended: "OK" or its reason, when (monotonic), and its result."""

    reason: str
    done_at: float
    result: Any = None

    def since(self, t0: float) -> float:
        return self.done_at - t0


class Pending:
    """A call in flight (a grpc future); records when it completed."""

    def __init__(self, future: grpc.Future) -> None:
        self.future = future
        self.started = time.monotonic()
        self._done_at: float | None = None
        future.add_done_callback(self._done)

    def _done(self, _future: grpc.Future) -> None:
        self._done_at = time.monotonic()

    def done(self) -> bool:
        return self.future.done()

    def outcome(self, timeout: float = CALL_TIMEOUT + 5) -> Outcome:
        try:
            result = self.future.result(timeout=timeout)
            reason = "OK"
        except grpc.FutureTimeoutError:
            self.future.cancel()
            raise AssertionError(f"no answer within {timeout}s") from None
        except grpc.RpcError as exc:
            result, reason = None, reason_of(exc)
        return Outcome(reason, self._done_at or time.monotonic(), result)


class Client:
    """Sync stubs on one channel to a master, with the few reads the tests repeat."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.hosts = host_service_pb2_grpc.HostServiceStub(self.channel)
        self.vms = vm_service_pb2_grpc.VMServiceStub(self.channel)
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def metrics(self, host: str) -> dm.HostMetrics:
        return self.hosts.GetHostMetrics(hs.GetHostMetricsRequest(uuid=host), timeout=5)

    def live(self, host: str) -> bool:
        return self.metrics(host).live

    def _live_if_known(self, host: str) -> bool | None:
        try:
            return self.live(host)
        except grpc.RpcError as exc:
            if reason_of(exc) == "HANDLE_INVALID":
                return None  # not registered yet
            raise

    def wait_live(self, host: str, want: bool, timeout: float, since: float | None = None,
                  step: float = 0.01) -> float:
        """Poll GetHostMetrics until live == want; seconds from `since` (default: now)."""
        t0 = time.monotonic() if since is None else since
        wait_until(lambda: self._live_if_known(host) == want, timeout - (time.monotonic() - t0),
                   f"host {host} live={want}", step)
        return time.monotonic() - t0

    def host(self, uuid: str) -> dm.Host:
        return self.hosts.GetHost(hs.GetHostRequest(uuid=uuid), timeout=5)

    def vm(self, uuid: str) -> dm.VM:
        return self.vms.GetVM(vs.GetVMRequest(uuid=uuid), timeout=5)

    def create_vm(self, name: str, memory: int = GiB) -> str:
        return self.vms.CreateVM(vs.CreateVMRequest(name_label=name, memory=memory, vcpus=1),
                                 timeout=5).uuid

    def forget(self, host: str) -> None:
        """Best effort: a dead test host leaves the pool (its VMs become HALTED)."""
        with contextlib.suppress(grpc.RpcError):
            self.hosts.ForgetHost(hs.ForgetHostRequest(uuid=host), timeout=5)

    def drive(self, vm: str, host: str, state: int) -> None:
        """Bring `vm` to HALTED, RUNNING (on `host`) or PAUSED through the master."""
        t = CALL_TIMEOUT
        current = self.vm(vm)
        if current.power_state == state and (state == dm.HALTED or current.resident_on == host):
            return
        if current.power_state != dm.HALTED and (state == dm.HALTED
                                                 or current.resident_on != host):
            self.vms.ShutdownVM(vs.ShutdownVMRequest(uuid=vm, force=True), timeout=t)
            current = self.vm(vm)
        if current.power_state == dm.HALTED and state != dm.HALTED:
            self.vms.StartVM(vs.StartVMRequest(uuid=vm, host=host), timeout=t)
            current = self.vm(vm)
        if current.power_state == dm.RUNNING and state == dm.PAUSED:
            self.vms.PauseVM(vs.PauseVMRequest(uuid=vm), timeout=t)
        elif current.power_state == dm.PAUSED and state == dm.RUNNING:
            self.vms.UnpauseVM(vs.UnpauseVMRequest(uuid=vm), timeout=t)
        got = self.vm(vm)
        assert got.power_state == state, f"VM {vm} is {state_name(got.power_state)}"


def settle(client: Client, slave: SlaveProcess, vms: Sequence[str], timeout: float = 10.0,
           quiet: float = 1.0) -> None:
    """Wait until the master's record of each VM agrees with what the slave runs
    (reconciliation has caught up after a fault), and stays so for `quiet` seconds."""
    def agreed() -> bool:
        domains = slave.domains()
        for uuid in vms:
            vm = client.vm(uuid)
            if domains.get(uuid, dm.HALTED) != vm.power_state:
                return False
            if vm.power_state != dm.HALTED and vm.resident_on != slave.uuid:
                return False
        return True

    def stable() -> bool:
        if not agreed():
            return False
        time.sleep(quiet)
        return agreed()

    wait_until(stable, timeout, "the master's VM records to agree with the slave", step=0.1)


# ---------------------------------------------------------------- Watch recorder


@dataclass(frozen=True)
class Seen:
    """One host_metrics event: when it arrived (monotonic), its op and live flag."""

    at: float
    op: int
    host: str
    live: bool


class Watcher:
    """Records every host_metrics event of one master's Watch stream, from its start."""

    def __init__(self, address: str, lifetime: float = 900.0) -> None:
        self._channel = grpc.insecure_channel(address)
        stub = event_service_pb2_grpc.EventServiceStub(self._channel)
        self._call = stub.Watch(ev.WatchRequest(classes=["host_metrics"]), timeout=lifetime)
        self._cond = threading.Condition()
        self.events: list[Seen] = []
        self.synced = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._call:
                if event.op == ev.SYNC:
                    self.synced.set()
                    continue
                if event.class_name != "host_metrics":
                    continue
                seen = Seen(time.monotonic(), event.op, event.host_metrics.host,
                            event.host_metrics.live)
                with self._cond:
                    self.events.append(seen)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"
        finally:
            with self._cond:
                self._cond.notify_all()

    def of(self, host: str) -> list[Seen]:
        with self._cond:
            return self._of(host)

    def _of(self, host: str) -> list[Seen]:
        return [e for e in self.events if e.host == host]

    def flips(self, host: str) -> list[Seen]:
        """The events of `host` that changed its live flag (its first event sets it)."""
        with self._cond:
            return self._flips(host)

    def _flips(self, host: str) -> list[Seen]:
        out: list[Seen] = []
        last: bool | None = None
        for e in self._of(host):
            if e.op == ev.DEL:
                continue
            if last is not None and e.live != last:
                out.append(e)
            last = e.live
        return out

    def wait_flip(self, host: str, live: bool, after: float, timeout: float) -> Seen:
        """The first flip of `host` to `live` that arrived at or after `after`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._flips(host):
                    if e.live == live and e.at >= after:
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(
                        f"no Watch event flipping host {host} to live={live} within "
                        f"{timeout}s (stream error: {self.error}); saw {self._of(host)}")
                self._cond.wait(left)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


# ---------------------------------------------------------------- lab and cases


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


def master_args(heartbeat_interval: float = 1.0, dead_after: float = 3.0,
                contact_timeout: float = 2.0, report_interval: float | None = None) -> list[str]:
    """The tests judge silence from the master's record of the last report
    (sync_to_beat, beat_after), so by default slaves report as often as the
    settings allow (report_interval: at least the interval, and 3 of them at
    least dead_after); a test of the 10 s default passes report_interval."""
    if report_interval is None:
        report_interval = max(heartbeat_interval, round(dead_after / 3 + 0.005, 2))
    return ["--heartbeat-interval", str(heartbeat_interval), "--dead-after", str(dead_after),
            "--contact-timeout", str(contact_timeout), "--report-interval", str(report_interval)]


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
                     **settings: float) -> Master:
        """A new master of its own (the caller may kill it); stopped by close()."""
        self._count += 1
        db = db or self.tmp / f"pool-{self._count}.db"
        proc = MasterProcess(db, listen=listen or f"{self.listen_ip}:0",
                             extra_args=master_args(**settings), log_dir=self.tmp)
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

    def slave(self, master: Master, *extra: str, wait_live: bool = True) -> SlaveProcess:
        name = self.lab.next_name()
        state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.lab.tmp))
        slave = SlaveProcess(master.address, state, name, self.lab.tmp, self.lab.host, extra)
        self.slaves.append((slave, master))
        slave.start()
        if wait_live:
            try:
                master.client.wait_live(slave.uuid, True, timeout=10)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{slave.log()}\n"
                                     f"{master.process.stderr_text()[-3000:]}") from None
        return slave

    def logs(self) -> str:
        return "\n".join(s.log() for s, _ in self.slaves)

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
