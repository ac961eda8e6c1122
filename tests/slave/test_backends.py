"""make_hypervisor: --backend picks the backend; without the libvirt binding
the slave refuses to start and says what to install."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.slave.libvirt_support import HOST, needs_libvirt, node_uri
from xcp_control.settings import SettingsError, SlaveSettings
from xcp_control.slave.backends import BackendUnavailable, make_hypervisor
from xcp_control.slave.hypervisor import SimulatedHypervisor


def test_simulated_is_the_default():
    hv = asyncio.run(make_hypervisor(HOST, SlaveSettings().validate()))
    assert isinstance(hv, SimulatedHypervisor)


@needs_libvirt
def test_libvirt_backend_opens_its_uri(tmp_path):
    from xcp_control.slave.libvirt_backend import LibvirtHypervisor
    settings = SlaveSettings(backend="libvirt", libvirt_uri=node_uri(tmp_path),
                             state_dir=str(tmp_path), memory=2 * 1024**3).validate()

    async def go():
        hv = await make_hypervisor(HOST, settings)
        try:
            assert isinstance(hv, LibvirtHypervisor) and hv.available
            assert hv.memory_total == 2 * 1024**3 and await hv.list_domains() == []
            assert hv.console_log("x").parent == (tmp_path / "console").resolve()
        finally:
            await hv.close()
    asyncio.run(go())


def test_without_the_binding_it_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt now fails
    monkeypatch.setitem(sys.modules, "xcp_control.slave.libvirt_backend", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'xcp-control\[libvirt\]'"):
        asyncio.run(make_hypervisor(HOST, SlaveSettings(backend="libvirt").validate()))


@pytest.mark.parametrize("field, value", [("backend", "xen"), ("libvirt_domain_type", "lxc"),
                                          ("shutdown_timeout", 0), ("shutdown_resend", -1)])
def test_bad_backend_settings_are_refused(field, value):
    with pytest.raises(SettingsError, match=field):
        SlaveSettings(**{field: value}).validate()
