"""Helpers for the libvirt backend's unit tests: libvirt's test driver with a
private node per test (`test:///<file>`: in-process, no daemon)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from xcp_control.errors import XcpError

HAVE_LIBVIRT = importlib.util.find_spec("libvirt") is not None

HOST = "11111111-1111-4111-8111-111111111111"
GiB = 1024**3

# ./scripts/test installs the binding (ensure_libvirt), so CI never skips these.
needs_libvirt = pytest.mark.skipif(not HAVE_LIBVIRT, reason="libvirt-python not installed "
                                   "(pip install '.[libvirt]'; ./scripts/test does)")

NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>x86</model><nodes>1</nodes><sockets>1</sockets>
       <cores>4</cores><threads>1</threads><active>4</active></cpu>
  <memory>16777216</memory>
</node>
"""


def node_uri(tmp_path: Path) -> str:
    node = tmp_path / "libvirt-test-node.xml"
    if not node.exists():
        node.write_text(NODE_XML)
    return f"test://{node}"


async def libvirt_hypervisor(tmp_path: Path, memory: int, host: str = HOST, uri: str = "",
                             **kwargs):
    from xcp_control.slave.libvirt_backend import LibvirtHypervisor
    hv = LibvirtHypervisor(host, memory, uri or node_uri(tmp_path), domain_type="test",
                           console_dir=str(tmp_path / "console"), **kwargs)
    await hv.open()
    return hv


async def raises(reason: str, coro, **params) -> XcpError:
    try:
        await coro
    except XcpError as exc:
        assert exc.reason == reason, exc.message
        for key, value in params.items():
            assert exc.params[key] == value, (key, exc.params)
        return exc
    raise AssertionError(f"expected {reason}")
