"""Real libvirt for tests and benchmarks: libvirtd (and virtlogd) started here
when none runs (there is no systemd on CI), the tiny guest of
scripts/build-guest, and a look at what QEMU does behind the slave.

`LibvirtLab` starts the daemons it needs as its own children and stops only
those; `cleanup(vm_uuids)` destroys the domains a test made, even when it
failed. Guests run under TCG (`--libvirt-domain-type qemu`): that works on any
machine, nested virtualisation or not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

import pytest

REPO = Path(__file__).resolve().parents[2]
QEMU_URI = "qemu:///system"
PID_DIR = Path("/run/libvirt/qemu")
INIT_MARK = "XCP-GUEST: init started"
READY_MARK = "XCP-GUEST: ready"
ACPI_MARK = "XCP-GUEST: acpi power button: powering off"
IGNORING_MARK = "XCP-GUEST: ignoring acpi"
_DAEMON_START = 30.0  # seconds libvirtd gets to answer (its first start probes QEMU)


def skip_unless_possible() -> None:
    """Skip (with the reason) where this cannot run: not root, or the tools are
    missing. CI is root and ./scripts/test installs the tools (ensure_libvirt)."""
    if os.geteuid() != 0:
        pytest.skip("real libvirt guests need root (CI runs as root)")
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} missing: ./scripts/test installs it (ensure_libvirt)")
    pytest.importorskip("libvirt", reason="libvirt-python missing: pip install '.[libvirt]'")


def _answers(uri: str = QEMU_URI) -> bool:
    import libvirt
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


class LibvirtLab:
    """The daemons, a guest image and a world-traversable scratch dir (QEMU runs
    as libvirt-qemu and must reach the kernel, initrd and console logs)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.dir = Path(tempfile.mkdtemp(prefix="xcp-libvirt-"))
        self.dir.chmod(0o755)
        self.guest = self.dir / "guest"
        self.consoles = self.dir / "console"

    def start(self) -> "LibvirtLab":
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)
        if not _answers():
            self._start_daemons()
        subprocess.run([str(REPO / "scripts" / "build-guest"), str(self.guest)], check=True)
        self.guest.chmod(0o755)
        self.consoles.mkdir(mode=0o755, exist_ok=True)
        return self

    def _start_daemons(self, daemons=("virtlogd", "libvirtd")) -> None:
        for daemon in daemons:
            path = shutil.which(daemon) or f"/usr/sbin/{daemon}"
            self.started.append(subprocess.Popen(
                [path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.dir / f"{daemon}.log", "ab"), start_new_session=True))
        deadline = time.monotonic() + _DAEMON_START
        while not _answers():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.started):
                self.stop()
                raise RuntimeError("libvirtd did not start: "
                                   + (self.dir / "libvirtd.log").read_text(errors="replace"))
            time.sleep(0.2)

    @property
    def owns_libvirtd(self) -> bool:
        return len(self.started) == 2

    def stop_libvirtd(self) -> None:
        """Stop the libvirtd this lab started (QEMU processes keep running)."""
        libvirtd = self.started.pop()
        libvirtd.send_signal(signal.SIGTERM)
        libvirtd.wait(timeout=15)

    def start_libvirtd(self) -> None:
        """Start it again; it re-attaches to the running QEMU processes."""
        self._start_daemons(("libvirtd",))

    @property
    def kernel(self) -> str:
        return str(self.guest / "vmlinuz")

    @property
    def initrd(self) -> str:
        return str(self.guest / "initrd.img")

    def slave_args(self, shutdown_timeout: float = 6.0, shutdown_resend: float = 2.0) -> list[str]:
        return ["--backend", "libvirt", "--libvirt-uri", QEMU_URI,
                "--libvirt-domain-type", "qemu", "--console-dir", str(self.consoles),
                "--shutdown-timeout", str(shutdown_timeout),
                "--shutdown-resend", str(shutdown_resend)]

    def console(self, vm_uuid: str) -> str:
        path = self.consoles / f"{vm_uuid}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def qemu_pid(self, vm_uuid: str) -> int | None:
        """The QEMU process of the domain, if it runs."""
        try:
            pid = int((PID_DIR / f"xcp-{vm_uuid}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"qemu-system" in cmdline and vm_uuid.encode() in cmdline else None

    def domain_state(self, vm_uuid: str) -> int | None:
        """libvirt's state of the domain (VIR_DOMAIN_*), None when there is none."""
        import libvirt
        conn = libvirt.open(QEMU_URI)
        try:
            return conn.lookupByUUIDString(vm_uuid).state()[0]
        except libvirt.libvirtError:
            return None
        finally:
            conn.close()

    def cleanup(self, vm_uuids: Iterable[str]) -> None:
        """Destroy the domains of these VMs, whatever happened to the test."""
        import libvirt
        try:
            conn = libvirt.open(QEMU_URI)
        except libvirt.libvirtError:
            return
        try:
            for vm in vm_uuids:
                try:
                    conn.lookupByUUIDString(vm).destroy()
                except libvirt.libvirtError:
                    pass
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the daemons this lab started (transient domains were destroyed
        by cleanup; libvirtd leaves none defined)."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.started.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
