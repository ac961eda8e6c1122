"""The libvirt backend's blocking calls: each runs in a worker thread of
LibvirtConnection (fn(conn, vm_uuid, ...)), never on the event loop."""

from __future__ import annotations

import logging
from typing import Callable

import libvirt

from xcp_control import errors
from xcp_control.errors import XcpError
from xcp_control.model import PAUSED, RUNNING
from xcp_control.slave import libvirt_xml
from xcp_control.slave.hypervisor import DomainInfo

log = logging.getLogger(__name__)

# libvirt's states as ours; SHUTOFF and CRASHED domains are gone (transient).
STATES = {
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: RUNNING,
    libvirt.VIR_DOMAIN_SHUTDOWN: RUNNING,  # shutting down, still running
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PAUSED,
    libvirt.VIR_DOMAIN_NOSTATE: RUNNING,
}


def lookup(conn: libvirt.virConnect, vm_uuid: str) -> libvirt.virDomain:
    return conn.lookupByUUIDString(vm_uuid)


def by_uuid(action: Callable[[libvirt.virDomain], object]):
    def run(conn: libvirt.virConnect, vm_uuid: str) -> None:
        action(lookup(conn, vm_uuid))
    return run


def domain_info(dom: libvirt.virDomain) -> DomainInfo | None:
    state, _max_kib, memory_kib, vcpus, _cpu = dom.info()
    ours = STATES.get(state)
    if ours is None:
        return None
    return DomainInfo(dom.UUIDString(), ours, memory_kib * libvirt_xml.KIB, vcpus)


def create(conn: libvirt.virConnect, vm_uuid: str, xml: str, paused: bool) -> DomainInfo:
    try:
        dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except libvirt.libvirtError as exc:
        if not paused or exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        dom = conn.createXML(xml, 0)  # drivers without START_PAUSED (test:///)
        dom.suspend()
    info = domain_info(dom)
    if info is None:  # stopped already: the guest died at once
        raise errors.internal(f"domain {vm_uuid} stopped right after it was created")
    return info


def request_shutdown(conn: libvirt.virConnect, vm_uuid: str) -> bool:
    """One ACPI shutdown request; False when the domain is no longer running."""
    try:
        lookup(conn, vm_uuid).shutdown()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return False
        raise
    return True


def destroy_if_active(conn: libvirt.virConnect, vm_uuid: str) -> None:
    try:
        lookup(conn, vm_uuid).destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def read_domains(conn: libvirt.virConnect, host_uuid: str) -> dict[str, DomainInfo]:
    """The running domains tagged with `host_uuid`, by uuid."""
    found: dict[str, DomainInfo] = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            metadata = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, libvirt_xml.NAMESPACE)
            if libvirt_xml.owner(metadata) != host_uuid:
                continue
            info = domain_info(dom)
        except libvirt.libvirtError:
            continue  # not ours (no metadata), or it went away meanwhile
        if info is not None:
            found[info.vm_uuid] = info
    return found


def translate(exc: libvirt.libvirtError, vm_uuid: str) -> XcpError:
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return errors.handle_invalid("vm", vm_uuid)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:  # libvirt's state is not ours
        log.info("libvirt refused an operation on %s: %s", vm_uuid, exc.get_error_message())
        return errors.vm_bad_power_state(vm_uuid, "", "UNKNOWN")
    log.warning("libvirt failed on domain %s: %s", vm_uuid, exc.get_error_message())
    return errors.internal(f"libvirt: {exc.get_error_message()}")
