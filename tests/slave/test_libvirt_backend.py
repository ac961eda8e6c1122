"""What only the libvirt backend does, on libvirt's test driver (no daemon):
kernel checks, the host tag, adoption of running domains, events, the
clean-then-hard shutdown, and a lost connection. The real guest under QEMU is
tests/integration/test_libvirt_guest.py."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.slave.libvirt_support import HOST, GiB, libvirt_hypervisor, needs_libvirt, raises
from xcp_control.model import HALTED, RUNNING
from xcp_control.slave.hypervisor import BootSpec

pytestmark = needs_libvirt

VM1 = "aaaaaaaa-0000-4000-8000-000000000001"
OTHER_HOST = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def boot(tmp_path) -> BootSpec:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd.img").write_bytes(b"initrd")
    return BootSpec(str(tmp_path / "vmlinuz"), str(tmp_path / "initrd.img"), "xcp.marker")


async def until(predicate, what: str, limit: float = 5.0) -> None:
    """Wait for libvirt's event thread to deliver (real events, bounded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not predicate():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def raw(hv, fn):
    """Run fn(virConnect) on the backend's own connection, behind its back."""
    return await hv._conn.call(lambda conn, _: fn(conn), None)


def test_start_without_kernel_or_with_a_missing_one_is_invalid_value(tmp_path, boot):
    async def go():
        hv = await libvirt_hypervisor(tmp_path, 4 * GiB)
        try:
            await raises("INVALID_VALUE", hv.start(VM1, GiB, 1), field="pv_kernel")
            await raises("INVALID_VALUE", hv.start(VM1, GiB, 1, boot=BootSpec(
                str(tmp_path / "nope"))), field="pv_kernel")
            await raises("INVALID_VALUE", hv.start(VM1, GiB, 1, boot=BootSpec(
                boot.kernel, str(tmp_path / "nope"))), field="pv_ramdisk")
            assert await hv.list_domains() == [] and hv.memory_free == 4 * GiB
        finally:
            await hv.close()
    asyncio.run(go())


def test_domain_is_tagged_transient_and_boots_the_vms_kernel(tmp_path, boot):
    async def go():
        hv = await libvirt_hypervisor(tmp_path, 4 * GiB)
        try:
            await hv.start(VM1, 128 * 1024**2, 2, boot=boot)
            xml = await raw(hv, lambda c: c.lookupByUUIDString(VM1).XMLDesc(0))
            persistent = await raw(hv, lambda c: c.lookupByUUIDString(VM1).isPersistent())
            assert f"<name>xcp-{VM1}</name>" in xml
            assert f'host="{HOST}"' in xml and "urn:xcp-control:domain:1" in xml
            assert f"<kernel>{boot.kernel}</kernel>" in xml
            assert f"<initrd>{boot.ramdisk}</initrd>" in xml
            assert "<cmdline>xcp.marker</cmdline>" in xml
            assert str(hv.console_log(VM1)) in xml
            assert not persistent  # transient: libvirt forgets it once it stops
        finally:
            await hv.close()
    asyncio.run(go())


def test_lists_only_its_own_domains_and_adopts_running_ones(tmp_path, boot):
    """test:///default is one hypervisor for the whole process, with a domain
    of its own ("test", untagged): a second slave of the same host adopts our
    domain; a slave of another host and the untagged domain are not listed."""
    async def go():
        first = await libvirt_hypervisor(tmp_path, 4 * GiB, uri="test:///default")
        others = []
        try:
            await first.start(VM1, GiB, 1, boot=boot)
            again = await libvirt_hypervisor(tmp_path, 4 * GiB, uri="test:///default")
            stranger = await libvirt_hypervisor(tmp_path, 4 * GiB, host=OTHER_HOST,
                                                uri="test:///default")
            others = [again, stranger]
            assert [(d.vm_uuid, d.state) for d in await again.list_domains()] == [(VM1, RUNNING)]
            assert again.memory_free == 3 * GiB
            assert await stranger.list_domains() == []
            await raises("HANDLE_INVALID", stranger.pause(VM1))
            assert (await again.shutdown(VM1)).state == HALTED
            await until(lambda: not first._domains, "the first slave to see the stop")
        finally:
            for hv in [first, *others]:
                await hv.destroy(VM1)
                await hv.close()
    asyncio.run(go())


def test_a_domain_that_stops_by_itself_leaves_the_list(tmp_path, boot):
    async def go():
        hv = await libvirt_hypervisor(tmp_path, 4 * GiB)
        changed = asyncio.Event()
        try:
            await hv.start(VM1, GiB, 1, boot=boot)
            hv.add_listener(changed.set)
            await raw(hv, lambda c: c.lookupByUUIDString(VM1).destroy())  # "powers off"
            await asyncio.wait_for(changed.wait(), 5)
            await until(lambda: not hv._domains, "the event's re-read")
            assert await hv.list_domains() == [] and hv.memory_free == 4 * GiB
        finally:
            await hv.close()
    asyncio.run(go())


def test_ignored_clean_shutdown_is_resent_then_hard_stopped(tmp_path, boot, monkeypatch):
    """A guest that ignores ACPI: requests go unanswered (the test driver would
    honour them, so they are counted and dropped); after shutdown_timeout of
    the injected clock the domain is destroyed and reported HALTED."""
    from xcp_control.slave import libvirt_calls
    requests = []
    monkeypatch.setattr(libvirt_calls, "request_shutdown",
                        lambda conn, vm: requests.append(vm) or True)
    ticks = itertools.count()

    async def go():
        hv = await libvirt_hypervisor(tmp_path, 4 * GiB, shutdown_timeout=3.0,
                                      shutdown_resend=0.001, clock=lambda: next(ticks))
        try:
            await hv.start(VM1, GiB, 1, boot=boot)
            assert (await hv.shutdown(VM1)).state == HALTED
            assert len(requests) >= 2  # re-sent before giving up
            assert await hv.list_domains() == []
            active = await raw(hv, lambda c: [d.UUIDString() for d in c.listAllDomains(1)])
            assert VM1 not in active
        finally:
            await hv.close()
    asyncio.run(go())


def test_destroy_during_clean_shutdown_fails_it_with_handle_invalid(tmp_path, boot,
                                                                    monkeypatch):
    from xcp_control.slave import libvirt_calls
    monkeypatch.setattr(libvirt_calls, "request_shutdown", lambda conn, vm: True)

    async def go():
        hv = await libvirt_hypervisor(tmp_path, 4 * GiB, shutdown_timeout=30.0,
                                      shutdown_resend=30.0)
        try:
            await hv.start(VM1, GiB, 1, boot=boot)
            stopping = asyncio.ensure_future(hv.shutdown(VM1))
            await until(lambda: VM1 in hv._gone, "the shutdown to wait for the guest")
            await hv.destroy(VM1)
            await raises("HANDLE_INVALID", stopping, uuid=VM1)
            assert await hv.list_domains() == []
        finally:
            await hv.close()
    asyncio.run(go())


def test_lost_connection_fails_calls_keeps_the_list_and_reopens(tmp_path, boot):
    async def go():
        hv = await libvirt_hypervisor(tmp_path, 4 * GiB)
        try:
            await hv.start(VM1, GiB, 1, boot=boot)
            before = await hv.list_domains()
            conn = hv._conn._conn
            conn.close()  # the connection dies under the backend
            await raises("HYPERVISOR_UNAVAILABLE", hv.pause(VM1), host=HOST)
            assert not hv.available
            assert await hv.list_domains() == before  # last known, not an empty host
            await raises("HYPERVISOR_UNAVAILABLE", hv.reboot(VM1))
            await until(lambda: hv.available, "the connection to be re-opened")
            # A private test:/// node starts empty again: the resync says so.
            await until(lambda: not hv._domains, "the resync after re-opening")
        finally:
            await hv.close()
    asyncio.run(go())
