"""Which hypervisor backend a slave runs: `--backend simulated|libvirt`.

The libvirt binding is an optional extra (`pip install '.[libvirt]'`), so it is
imported only when asked for; without it the slave refuses to start and says
what to install.
"""

from __future__ import annotations

from pathlib import Path

from xcp_control.settings import SlaveSettings
from xcp_control.slave.hypervisor import Hypervisor, SimulatedHypervisor

INSTALL_HINT = ("--backend libvirt needs the libvirt binding: pip install 'xcp-control[libvirt]' "
                "(libvirt-python builds against Debian's libvirt-dev and pkg-config)")


class BackendUnavailable(Exception):
    """The chosen backend cannot be loaded; the message says what to install."""


async def make_hypervisor(host_uuid: str, settings: SlaveSettings) -> Hypervisor:
    """The backend `settings.backend` names, connected and with its domains
    adopted (libvirt); `Hypervisor.close()` releases it."""
    if settings.backend == "simulated":
        return SimulatedHypervisor.from_settings(host_uuid, settings)
    try:
        from xcp_control.slave.libvirt_backend import LibvirtHypervisor
    except ImportError as exc:
        raise BackendUnavailable(f"{INSTALL_HINT} ({exc})") from None
    hypervisor = LibvirtHypervisor(
        host_uuid, settings.memory, settings.libvirt_uri,
        domain_type=settings.libvirt_domain_type,
        console_dir=settings.console_dir or str(Path(settings.state_dir) / "console"),
        shutdown_timeout=settings.shutdown_timeout, shutdown_resend=settings.shutdown_resend)
    await hypervisor.open()
    return hypervisor
