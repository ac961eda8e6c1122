"""What a fault test sees of a master: a sync Client with the reads the tests repeat,
calls in flight (`Pending`, their `Outcome`), `settle` (the master's records agree with
a slave), and a Watch recorder (`Watcher`) that timestamps every host_metrics event."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import grpc

from tests.support.clients import reason_of
from tests.support.daemons import SlaveProcess
from tests.support.processes import wait_until
from xcp.v1 import datamodel_pb2 as dm
from xcp.v1 import event_service_pb2 as ev
from xcp.v1 import event_service_pb2_grpc
from xcp.v1 import host_service_pb2 as hs
from xcp.v1 import host_service_pb2_grpc
from xcp.v1 import vm_service_pb2 as vs
from xcp.v1 import vm_service_pb2_grpc

GiB = 1024**3
CALL_TIMEOUT = 15.0  # client deadline of forwarded calls: above every bound we assert
STATE_NAMES = {dm.HALTED: "HALTED", dm.RUNNING: "RUNNING", dm.PAUSED: "PAUSED"}


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, str(state))


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

    wait_until(stable, timeout, "the master's VM records to agree with the slave", interval=0.1)


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
