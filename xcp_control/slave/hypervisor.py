"""The slave's hypervisor backend: the interface, and a simulated implementation.

`Hypervisor` is everything the slave (its SlaveService and its heartbeat client)
needs from a hypervisor; a real backend (xenctrl, libvirt) subclasses it and
nothing else changes. Backends raise catalogued `XcpError`s, which pass through
the slave and the master unchanged. Inputs are validated by the caller (the
servicer): a backend may assume a non-empty uuid, memory > 0 and vcpus >= 1.

`SimulatedHypervisor` keeps domains in memory, takes configurable time per
operation and accounts memory against the host's capacity, so the pool can be
exercised without Xen.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from xcp.v1 import slave_service_pb2
from xcp_control import errors
from xcp_control.model import HALTED, PAUSED, RUNNING, state_name, state_names

if TYPE_CHECKING:
    from xcp_control.settings import SlaveSettings

log = logging.getLogger(__name__)


Listener = Callable[[], None]
Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True)
class DomainInfo:
    """A domain as a backend reports it: the VM it runs and its state."""

    vm_uuid: str
    state: int  # a datamodel_pb2.PowerState value: RUNNING, PAUSED or HALTED
    memory: int  # bytes held by the domain
    vcpus: int

    def to_proto(self) -> slave_service_pb2.Domain:
        return slave_service_pb2.Domain(vm_uuid=self.vm_uuid, state=self.state,
                                        memory=self.memory, vcpus=self.vcpus)


@dataclass(frozen=True)
class BootSpec:
    """What a domain boots: the VM's pv_kernel, pv_ramdisk and pv_args (paths
    on this host). The simulated backend ignores it; libvirt needs a kernel."""

    kernel: str = ""
    ramdisk: str = ""
    args: str = ""


class Hypervisor(abc.ABC):
    """What the slave needs from a hypervisor.

    Lifecycle methods return the domain as it is afterwards (`shutdown` returns
    it HALTED, after which it is no longer listed). Backends call `_notify()`
    whenever the domain list or a domain's state changes, so the heartbeat
    client knows its cached list is stale.
    """

    def __init__(self, host_uuid: str) -> None:
        self.host_uuid = host_uuid
        self._listeners: list[Listener] = []

    @abc.abstractmethod
    async def start(self, vm_uuid: str, memory: int, vcpus: int,
                    paused: bool = False, boot: BootSpec | None = None) -> DomainInfo:
        """Create and boot a domain (left PAUSED if `paused`) from `boot`."""

    @abc.abstractmethod
    async def shutdown(self, vm_uuid: str, force: bool = False) -> DomainInfo:
        """Stop a RUNNING or PAUSED domain, cleanly or at once; it is removed."""

    @abc.abstractmethod
    async def reboot(self, vm_uuid: str, force: bool = False) -> DomainInfo:
        """Reboot a RUNNING domain, cleanly or by hard reset."""

    @abc.abstractmethod
    async def pause(self, vm_uuid: str) -> DomainInfo:
        """Pause a RUNNING domain."""

    @abc.abstractmethod
    async def unpause(self, vm_uuid: str) -> DomainInfo:
        """Resume a PAUSED domain."""

    @abc.abstractmethod
    async def destroy(self, vm_uuid: str) -> None:
        """Remove a domain whatever its state; an unknown domain is no error
        (the master uses this to clean up)."""

    @abc.abstractmethod
    async def list_domains(self) -> list[DomainInfo]:
        """Every domain on the host, ordered by vm_uuid."""

    @property
    @abc.abstractmethod
    def memory_total(self) -> int:
        """Bytes domains may use on this host."""

    @property
    @abc.abstractmethod
    def memory_free(self) -> int:
        """Bytes not held by domains (including domains still booting)."""

    @abc.abstractmethod
    async def set_enabled(self, enabled: bool) -> bool:
        """Allow or refuse new domains; returns the new setting."""

    @property
    @abc.abstractmethod
    def enabled(self) -> bool:
        """Whether the host accepts new domains."""

    @property
    def available(self) -> bool:
        """False while the hypervisor cannot be reached: `list_domains` then
        returns the last list known, and reports say so."""
        return True

    async def close(self) -> None:
        """Release connections and threads at slave stop; domains keep running."""

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call `callback()` after every change of the domain list or of a
        domain's state; returns a function that removes it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the operation
                log.exception("domain change listener failed")


@dataclass(eq=False)
class _Domain:
    """A simulated domain; it holds its memory from the moment its boot begins."""

    vm_uuid: str
    memory: int
    vcpus: int
    state: int
    listed: bool = False  # False while booting: not reported until it runs
    operation: str | None = None  # the operation in progress, if any
    destroyed: bool = False  # DestroyDomain removed it mid-operation
    waiter: asyncio.Future | None = None  # the running operation's delay

    def info(self, state: int | None = None) -> DomainInfo:
        return DomainInfo(self.vm_uuid, self.state if state is None else state,
                          self.memory, self.vcpus)


class SimulatedHypervisor(Hypervisor):
    """Domains in memory, with realistic, configurable operation times.

    One operation at a time per domain (OTHER_OPERATION_IN_PROGRESS); DestroyDomain
    is the exception: it wins over a running operation, which then fails with
    HANDLE_INVALID. `sleep` is injectable so tests can hold an operation open
    without real time passing.
    """

    def __init__(self, host_uuid: str, memory_total: int, *, boot_time: float = 0.0,
                 clean_shutdown_time: float = 0.0, hard_shutdown_time: float = 0.0,
                 pause_time: float = 0.0, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(host_uuid)
        self._memory_total = memory_total
        self._boot_time = boot_time
        self._clean_shutdown_time = clean_shutdown_time
        self._hard_shutdown_time = hard_shutdown_time
        self._pause_time = pause_time
        self._sleep = sleep
        self._enabled = True
        self._domains: dict[str, _Domain] = {}

    @classmethod
    def from_settings(cls, host_uuid: str, settings: "SlaveSettings") -> "SimulatedHypervisor":
        return cls(host_uuid, settings.memory, boot_time=settings.boot_time,
                   clean_shutdown_time=settings.clean_shutdown_time,
                   hard_shutdown_time=settings.hard_shutdown_time,
                   pause_time=settings.pause_time)

    # -- lifecycle ---------------------------------------------------------

    async def start(self, vm_uuid: str, memory: int, vcpus: int,
                    paused: bool = False, boot: BootSpec | None = None) -> DomainInfo:
        existing = self._domains.get(vm_uuid)
        if existing is not None:
            self._check_idle(existing)
            raise errors.vm_bad_power_state(vm_uuid, state_name(HALTED), state_name(existing.state))
        if not self._enabled:
            raise errors.host_disabled(self.host_uuid)
        if memory > self.memory_free:
            raise errors.host_not_enough_free_memory(vm_uuid, self.host_uuid)
        domain = _Domain(vm_uuid, memory, vcpus, PAUSED if paused else RUNNING)
        self._domains[vm_uuid] = domain  # reserves the memory while it boots
        try:
            await self._hold(domain, "start", self._boot_time)
        except BaseException:
            if self._domains.get(vm_uuid) is domain:
                del self._domains[vm_uuid]
            raise
        domain.listed = True
        self._notify()
        return domain.info()

    async def shutdown(self, vm_uuid: str, force: bool = False) -> DomainInfo:
        domain = self._get(vm_uuid)
        operation, seconds = (("hard_shutdown", self._hard_shutdown_time) if force
                              else ("clean_shutdown", self._clean_shutdown_time))
        self._check_idle(domain)
        self._require(domain, RUNNING, PAUSED)
        await self._hold(domain, operation, seconds)
        del self._domains[vm_uuid]
        self._notify()
        return domain.info(HALTED)

    async def reboot(self, vm_uuid: str, force: bool = False) -> DomainInfo:
        domain = self._get(vm_uuid)
        operation, down = (("hard_reboot", self._hard_shutdown_time) if force
                           else ("clean_reboot", self._clean_shutdown_time))
        self._check_idle(domain)
        self._require(domain, RUNNING)
        await self._hold(domain, operation, down + self._boot_time)
        return domain.info()  # still RUNNING: nothing for listeners

    async def pause(self, vm_uuid: str) -> DomainInfo:
        return await self._switch(vm_uuid, "pause", RUNNING, PAUSED)

    async def unpause(self, vm_uuid: str) -> DomainInfo:
        return await self._switch(vm_uuid, "unpause", PAUSED, RUNNING)

    async def destroy(self, vm_uuid: str) -> None:
        domain = self._domains.pop(vm_uuid, None)
        if domain is None:
            return
        domain.destroyed = True
        if domain.waiter is not None:
            domain.waiter.cancel()  # the running operation fails with HANDLE_INVALID
        if domain.listed:
            self._notify()

    async def list_domains(self) -> list[DomainInfo]:
        return [d.info() for _, d in sorted(self._domains.items()) if d.listed]

    # -- host --------------------------------------------------------------

    @property
    def memory_total(self) -> int:
        return self._memory_total

    @property
    def memory_free(self) -> int:
        return self._memory_total - sum(d.memory for d in self._domains.values())

    async def set_enabled(self, enabled: bool) -> bool:
        self._enabled = enabled
        return self._enabled

    @property
    def enabled(self) -> bool:
        return self._enabled

    # -- helpers -----------------------------------------------------------

    async def _switch(self, vm_uuid: str, operation: str, before: int, after: int) -> DomainInfo:
        domain = self._get(vm_uuid)
        self._check_idle(domain)
        self._require(domain, before)
        await self._hold(domain, operation, self._pause_time)
        domain.state = after
        self._notify()
        return domain.info()

    def _get(self, vm_uuid: str) -> _Domain:
        domain = self._domains.get(vm_uuid)
        if domain is None:
            raise errors.handle_invalid("vm", vm_uuid)
        return domain

    @staticmethod
    def _check_idle(domain: _Domain) -> None:
        if domain.operation is not None:
            raise errors.other_operation_in_progress("vm", domain.vm_uuid, domain.operation)

    @staticmethod
    def _require(domain: _Domain, *states: int) -> None:
        if domain.state not in states:
            raise errors.vm_bad_power_state(domain.vm_uuid, state_names(states),
                                            state_name(domain.state))

    async def _hold(self, domain: _Domain, operation: str, seconds: float) -> None:
        """Keep the domain busy with `operation` for `seconds`. A DestroyDomain
        meanwhile cuts the wait short and fails the operation; a cancelled
        caller (the master's deadline) leaves the domain as it was."""
        domain.operation = operation
        domain.waiter = asyncio.ensure_future(self._sleep(seconds))
        try:
            await domain.waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if domain.destroyed and not (task and task.cancelling()):
                raise errors.handle_invalid("vm", domain.vm_uuid) from None
            raise
        finally:
            domain.waiter.cancel()  # no-op once done; stops the delay if we were cancelled
            domain.waiter = None
            domain.operation = None
        if domain.destroyed:
            raise errors.handle_invalid("vm", domain.vm_uuid)
