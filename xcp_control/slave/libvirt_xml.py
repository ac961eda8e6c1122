"""The libvirt domain XML of a VM, and how the slave recognises its own domains.

A domain is transient (createXML: libvirt forgets it when it stops), its libvirt
uuid is the VM's uuid, its name `xcp-<vm uuid>`, and its <metadata> holds an
element in our namespace naming the host (the slave) that owns it. Several
slaves may share one libvirtd (the tests run a pool on one machine): each lists
only the domains whose metadata names its host.
"""

from __future__ import annotations

from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr, escape

from xcp_control.slave.hypervisor import BootSpec

NAMESPACE = "urn:xcp-control:domain:1"
NAME_PREFIX = "xcp-"
KIB = 1024


def domain_xml(vm_uuid: str, host_uuid: str, memory: int, vcpus: int, boot: BootSpec, *,
               domain_type: str, console_log: str) -> str:
    """A direct-kernel-boot guest: kernel, optional initrd and command line from
    `boot`, memory rounded up to a KiB, ACPI on (clean shutdown is an ACPI
    power-button press), the first serial port logged to `console_log`."""
    memory_kib = -(-memory // KIB)
    initrd = f"<initrd>{escape(boot.ramdisk)}</initrd>" if boot.ramdisk else ""
    return f"""<domain type={quoteattr(domain_type)}>
  <name>{NAME_PREFIX}{escape(vm_uuid)}</name>
  <uuid>{escape(vm_uuid)}</uuid>
  <metadata><xcp:domain xmlns:xcp="{NAMESPACE}" host={quoteattr(host_uuid)}/></metadata>
  <memory unit="KiB">{memory_kib}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os>
    <type arch="x86_64">hvm</type>
    <kernel>{escape(boot.kernel)}</kernel>{initrd}
    <cmdline>{escape(boot.args)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type="file"><source path={quoteattr(console_log)}/><target port="0"/></serial>
    <console type="file"><source path={quoteattr(console_log)}/><target type="serial" port="0"/></console>
    <memballoon model="none"/>
  </devices>
</domain>"""


def owner(metadata: str) -> str:
    """The host uuid in our metadata element, as libvirt returns it
    (`virDomainGetMetadata`: the element without its prefix); "" if none."""
    try:
        element = ElementTree.fromstring(metadata)
    except ElementTree.ParseError:
        return ""
    return element.get("host", "")
