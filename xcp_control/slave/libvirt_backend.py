"""The libvirt backend: real domains under QEMU/KVM (or any libvirt driver).

- Domains are transient, tagged with our host (libvirt_xml.py); the slave lists
  only its own, and on start adopts those already running (a slave restarted
  after a crash must not lose, or kill, its VMs: reconcile by libvirt uuid).
- The domain list is a cache kept current by libvirt's lifecycle events: an
  event schedules a re-read (coalesced, one at a time), so a guest that powers
  itself off reaches the master with the next report. Operations update the
  cache with their result at once.
- One operation per domain at a time (OTHER_OPERATION_IN_PROGRESS), except
  destroy, which wins: the interrupted operation fails with HANDLE_INVALID.
- Clean shutdown is an ACPI request a guest may ignore: it is re-sent every
  `shutdown_resend` seconds and, after `shutdown_timeout`, the domain is
  destroyed (Nova's _clean_shutdown, xenopsd's clean-then-hard fallback).
- Memory is accounted against the slave's --memory, as the simulator does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import libvirt

from xcp_control import errors
from xcp_control.errors import XcpError
from xcp_control.model import HALTED, PAUSED, RUNNING, state_name, state_names
from xcp_control.slave import libvirt_calls as calls, libvirt_xml
from xcp_control.slave.hypervisor import BootSpec, DomainInfo, Hypervisor
from xcp_control.slave.libvirt_connection import LibvirtConnection

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_GONE_EVENTS = (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED)


@dataclass(eq=False)
class _Operation:
    name: str
    destroyed: bool = False  # a destroy removed the domain meanwhile


class LibvirtHypervisor(Hypervisor):
    """Domains of one libvirt connection that carry this host's tag."""

    def __init__(self, host_uuid: str, memory_total: int, uri: str, *,
                 domain_type: str = "auto", console_dir: str = ".",
                 shutdown_timeout: float = 50.0, shutdown_resend: float = 5.0,
                 clock: Clock = time.monotonic) -> None:
        super().__init__(host_uuid)
        self._memory_total = memory_total
        self._domain_type = domain_type
        self._console_dir = Path(console_dir)
        self._shutdown_timeout = shutdown_timeout
        self._shutdown_resend = shutdown_resend
        self._clock = clock
        self._enabled = True
        self._domains: dict[str, DomainInfo] = {}
        self._starting: dict[str, int] = {}  # vm -> memory reserved while it boots
        self._operations: dict[str, _Operation] = {}
        self._gone: dict[str, asyncio.Event] = {}  # set when the domain stops
        self._dirty = False
        self._resync: asyncio.Task | None = None
        self._writes = 0  # bumped by every operation's update of the list
        self._written: dict[str, int] = {}  # vm -> value of _writes at its last update
        self._conn = LibvirtConnection(uri, host_uuid, self._on_event, self._on_up,
                                       self._on_down)

    async def open(self) -> None:
        """Connect (or keep trying in the background) and adopt our domains."""
        self._console_dir.mkdir(parents=True, exist_ok=True)
        await self._conn.open()
        if not self._conn.up:
            log.warning("%s: domain calls fail until it is back", self._conn.last_error)
        await self._settle()

    async def close(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
        await self._conn.close()

    # -- lifecycle -----------------------------------------------------------

    async def start(self, vm_uuid: str, memory: int, vcpus: int,
                    paused: bool = False, boot: BootSpec | None = None) -> DomainInfo:
        boot = boot or BootSpec()
        self._check_boot(boot)
        with self._operation(vm_uuid, "start") as op:
            existing = self._domains.get(vm_uuid)
            if existing is not None:
                raise errors.vm_bad_power_state(vm_uuid, state_name(HALTED),
                                                state_name(existing.state))
            if not self._enabled:
                raise errors.host_disabled(self.host_uuid)
            if memory > self.memory_free:
                raise errors.host_not_enough_free_memory(vm_uuid, self.host_uuid)
            self._starting[vm_uuid] = memory
            try:
                xml = libvirt_xml.domain_xml(
                    vm_uuid, self.host_uuid, memory, vcpus, boot,
                    domain_type=self._type(), console_log=str(self.console_log(vm_uuid)))
                info = await self._call(vm_uuid, calls.create, xml, paused)
                if op.destroyed:  # a destroy came while libvirt was creating it
                    await self._call(vm_uuid, calls.destroy_if_active)
                    raise errors.handle_invalid("vm", vm_uuid)
            finally:
                del self._starting[vm_uuid]
            self._set(info)
            return info

    async def shutdown(self, vm_uuid: str, force: bool = False) -> DomainInfo:
        with self._operation(vm_uuid, "hard_shutdown" if force else "clean_shutdown") as op:
            info = self._require(vm_uuid, RUNNING, PAUSED)
            gone = self._gone[vm_uuid] = asyncio.Event()
            try:
                if not force:
                    if info.state == PAUSED:  # a paused guest cannot see the request
                        await self._call(vm_uuid, calls.by_uuid(lambda d: d.resume()))
                    await self._clean_shutdown(vm_uuid, gone)
                await self._call(vm_uuid, calls.destroy_if_active)
            finally:
                self._gone.pop(vm_uuid, None)
            if op.destroyed:
                raise errors.handle_invalid("vm", vm_uuid)
            self._remove(vm_uuid)
            return DomainInfo(vm_uuid, HALTED, info.memory, info.vcpus)

    async def reboot(self, vm_uuid: str, force: bool = False) -> DomainInfo:
        with self._operation(vm_uuid, "hard_reboot" if force else "clean_reboot"):
            info = self._require(vm_uuid, RUNNING)
            # Clean: an ACPI request (libvirt restarts the domain when the guest
            # powers off); hard: a reset, as a power-cycle of the board.
            await self._call(vm_uuid, calls.by_uuid(
                (lambda d: d.reset(0)) if force else (lambda d: d.reboot(0))))
            return info

    async def pause(self, vm_uuid: str) -> DomainInfo:
        return await self._switch(vm_uuid, "pause", RUNNING, PAUSED, lambda d: d.suspend())

    async def unpause(self, vm_uuid: str) -> DomainInfo:
        return await self._switch(vm_uuid, "unpause", PAUSED, RUNNING, lambda d: d.resume())

    async def destroy(self, vm_uuid: str) -> None:
        if vm_uuid not in self._domains and vm_uuid not in self._operations:
            return
        operation = self._operations.get(vm_uuid)
        if operation is not None:
            operation.destroyed = True
        await self._call(vm_uuid, calls.destroy_if_active)
        self._remove(vm_uuid)

    async def list_domains(self) -> list[DomainInfo]:
        return [info for _, info in sorted(self._domains.items())]

    # -- host ----------------------------------------------------------------

    @property
    def memory_total(self) -> int:
        return self._memory_total

    @property
    def memory_free(self) -> int:
        held = {vm: info.memory for vm, info in self._domains.items()}
        for vm, memory in self._starting.items():
            held.setdefault(vm, memory)  # counted once, even when already listed
        return self._memory_total - sum(held.values())

    async def set_enabled(self, enabled: bool) -> bool:
        self._enabled = enabled
        return enabled

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def available(self) -> bool:
        return self._conn.up

    def console_log(self, vm_uuid: str) -> Path:
        """Where the domain's first serial port is logged."""
        return self._console_dir.resolve() / f"{vm_uuid}.log"

    # -- operations ----------------------------------------------------------

    async def _clean_shutdown(self, vm_uuid: str, gone: asyncio.Event) -> None:
        """ACPI shutdown requests until the domain stops; after the timeout the
        caller's destroy hard-stops it."""
        deadline = self._clock() + self._shutdown_timeout
        while True:
            if not await self._call(vm_uuid, calls.request_shutdown):
                return  # already off
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(gone.wait(), min(self._shutdown_resend, remaining))
                return
            except TimeoutError:
                pass
            if self._clock() >= deadline:
                break
        log.info("domain %s ignored clean shutdown for %.0fs: hard stop", vm_uuid,
                 self._shutdown_timeout)

    async def _switch(self, vm_uuid: str, name: str, before: int, after: int,
                      action: Callable[[libvirt.virDomain], object]) -> DomainInfo:
        with self._operation(vm_uuid, name):
            info = self._require(vm_uuid, before)
            await self._call(vm_uuid, calls.by_uuid(action))
            updated = DomainInfo(vm_uuid, after, info.memory, info.vcpus)
            self._set(updated)
            return updated

    @contextmanager
    def _operation(self, vm_uuid: str, name: str) -> Iterator[_Operation]:
        running = self._operations.get(vm_uuid)
        if running is not None:
            raise errors.other_operation_in_progress("vm", vm_uuid, running.name)
        operation = self._operations[vm_uuid] = _Operation(name)
        try:
            yield operation
        finally:
            del self._operations[vm_uuid]

    def _require(self, vm_uuid: str, *states: int) -> DomainInfo:
        info = self._domains.get(vm_uuid)
        if info is None:
            raise errors.handle_invalid("vm", vm_uuid)
        if info.state not in states:
            raise errors.vm_bad_power_state(vm_uuid, state_names(states), state_name(info.state))
        return info

    def _check_boot(self, boot: BootSpec) -> None:
        if not boot.kernel:
            raise errors.invalid_value("pv_kernel", boot.kernel)
        if self._local():  # paths are this machine's: check them now, not in qemu
            for field, path in (("pv_kernel", boot.kernel), ("pv_ramdisk", boot.ramdisk)):
                if path and not os.path.isfile(path):
                    raise errors.invalid_value(field, path)

    def _local(self) -> bool:
        parsed = urllib.parse.urlsplit(self._conn.uri)
        return not parsed.hostname and "+" not in parsed.scheme

    def _type(self) -> str:
        if self._domain_type != "auto":
            return self._domain_type
        return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"

    async def _call(self, vm_uuid: str, fn, *args):
        """A libvirt call about one domain, its errors made catalogued."""
        try:
            return await self._conn.call(fn, vm_uuid, *args)
        except libvirt.libvirtError as exc:
            raise calls.translate(exc, vm_uuid) from None

    # -- the domain list -------------------------------------------------------

    def _set(self, info: DomainInfo) -> None:
        self._wrote(info.vm_uuid)
        if self._domains.get(info.vm_uuid) != info:
            self._domains[info.vm_uuid] = info
            self._notify()

    def _remove(self, vm_uuid: str) -> None:
        self._wrote(vm_uuid)
        if self._domains.pop(vm_uuid, None) is not None:
            self._notify()

    def _wrote(self, vm_uuid: str) -> None:
        self._writes += 1
        self._written[vm_uuid] = self._writes

    def _merge(self, listed: dict[str, DomainInfo], began: int) -> dict[str, DomainInfo]:
        """A read that began before an operation's update is older than it for
        that domain: keep the operation's result (the next read confirms it)."""
        merged = dict(listed)
        for vm, written in self._written.items():
            if written > began:
                if vm in self._domains:
                    merged[vm] = self._domains[vm]
                else:
                    merged.pop(vm, None)
        self._written = {vm: w for vm, w in self._written.items() if w > began}
        return merged

    def _on_event(self, vm_uuid: str, event: int, detail: int) -> None:
        if event in _GONE_EVENTS and vm_uuid in self._gone:
            self._gone[vm_uuid].set()
        self._request_resync()

    def _on_up(self) -> None:
        self._request_resync()

    def _on_down(self) -> None:
        self._notify()  # reports now say the hypervisor is unavailable

    def _request_resync(self) -> None:
        self._dirty = True
        if self._resync is None or self._resync.done():
            self._resync = asyncio.ensure_future(self._resync_loop())

    async def _settle(self) -> None:
        """Wait for the re-read in progress, if any (start-up adoption)."""
        if self._resync is not None:
            await asyncio.shield(self._resync)

    async def _resync_loop(self) -> None:
        """Re-read our domains until no event arrived during the last read: the
        last read to finish began after the last event, so it is current."""
        while self._dirty:
            self._dirty = False
            began = self._writes
            try:
                listed = await self._conn.call(calls.read_domains, self.host_uuid)
            except XcpError:
                return  # down: the re-open resyncs
            except libvirt.libvirtError as exc:
                log.warning("could not list libvirt domains: %s", exc.get_error_message())
                return
            listed = self._merge(listed, began)
            if listed != self._domains:
                adopted = listed.keys() - self._domains.keys() - self._operations.keys()
                if adopted:
                    log.info("domains found running: %s", ", ".join(sorted(adopted)))
                self._domains = listed
                self._notify()
