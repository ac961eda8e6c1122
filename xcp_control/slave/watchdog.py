"""Self-fencing that outlives the slave: the host watchdog.

With the libvirt backend, domains survive the slave's death, so HA's
self-fence cannot rely on the slave process alone (a SIGKILLed slave would
leave its VMs running while the pool restarts them elsewhere). Like xapi
arming Xen's watchdog, the slave arms the host's (Linux `/dev/watchdog`, e.g.
`modprobe softdog`) while HA is enabled and pets it only while the master
acknowledges it: a slave that dies, hangs or loses the pool stops petting, and
the kernel reboots the host when the watchdog's timeout runs out.

Linux semantics used: opening the device arms it; any write pets it; writing
"V" then closing disarms it (the "magic close", unless the driver was built
with nowayout). `WDIOC_SETTIMEOUT` sets the timeout on a real device; a
stand-in (a plain file, in tests) skips it.

HA does not exist yet: `WatchdogKeeper(..., ha_enabled=...)` and
`set_ha_enabled()` are the hook it will call. Nothing here runs by default.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
import struct
import time
from typing import Callable

log = logging.getLogger(__name__)

WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
MAGIC_CLOSE = b"V"
PET = b"\0"


class HostWatchdog:
    """One watchdog device, opened (armed) and closed (disarmed) by us."""

    def __init__(self, device: str = "/dev/watchdog", timeout: int = 30) -> None:
        self.device = device
        self.timeout = timeout
        self._fd: int | None = None

    @classmethod
    def from_settings(cls, settings) -> "HostWatchdog":
        return cls(settings.watchdog_device)

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def arm(self) -> None:
        if self._fd is not None:
            return
        self._fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        if stat.S_ISCHR(os.fstat(self._fd).st_mode):
            fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", self.timeout))
        log.warning("host watchdog %s armed: the host reboots %ds after petting stops",
                    self.device, self.timeout)

    def pet(self) -> None:
        if self._fd is not None:
            os.write(self._fd, PET)

    def disarm(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.write(fd, MAGIC_CLOSE)
        finally:
            os.close(fd)
        log.info("host watchdog %s disarmed", self.device)


class WatchdogKeeper:
    """Arms the watchdog while HA is enabled; pets it each `interval` while
    `acknowledged(now)` says the master still acknowledges this host."""

    def __init__(self, watchdog: HostWatchdog, acknowledged: Callable[[float], bool], *,
                 ha_enabled: bool = False, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watchdog = watchdog
        self._acknowledged = acknowledged
        self._interval = interval
        self._clock = clock
        self.ha_enabled = False
        self.set_ha_enabled(ha_enabled)

    def set_ha_enabled(self, enabled: bool) -> None:
        """HA's hook: arm when it is enabled, disarm when it is disabled."""
        self.ha_enabled = enabled
        if enabled:
            self.watchdog.arm()
        else:
            self.watchdog.disarm()

    def tick(self, now: float) -> bool:
        """One pass: pet if armed and acknowledged; whether it petted."""
        if not self.watchdog.armed or not self._acknowledged(now):
            return False
        self.watchdog.pet()
        return True

    async def run(self) -> None:
        """Tick every interval until cancelled; cancelling leaves it armed (a
        slave stopping while HA is on must still be fenced if it does not
        come back: disarm explicitly with set_ha_enabled(False))."""
        while True:
            self.tick(self._clock())
            await asyncio.sleep(self._interval)
