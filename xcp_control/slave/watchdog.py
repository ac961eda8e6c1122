"""Self-fencing that outlives the slave: the host watchdog.

Why. With the libvirt backend domains survive the slave's death, so HA's
self-fence (slave/ha_guard.py) cannot rely on the slave process alone: a
SIGKILLed or hung slave destroys nothing while the leader restarts its VMs
elsewhere. Like xapi arming Xen's watchdog, the slave arms the host's (Linux
/dev/watchdog, `modprobe softdog`) while the leader says HA is enabled, and
pets it only while its lease is good (acknowledged, not fenced, not run out).
A slave that dies, hangs or loses the pool stops petting; the kernel resets
the host. A fenced host reboots too, as in xapi (and if libvirt could not
destroy a domain, the reboot does).

Off unless asked for: `xcp-slave --watchdog-device PATH` (default "": none),
so no test, default run or ./scripts/pool ever arms a real watchdog (CI runs
as root: a reset would kill it). With XCP_WATCHDOG_STAND_IN_ONLY=1 in the
environment (tests/conftest.py sets it) a character device is refused: tests
use stand-ins (a plain file, a FIFO). HA enabled on the libvirt backend
without a device logs a warning (`NoWatchdog`).

Linux semantics used. Opening the device starts it; a write pets it;
WDIOC_SETTIMEOUT sets its timeout (whole seconds) and pets it; "V" then close
stops it (the magic close; softdog loaded with nowayout=1 refuses, and the
host then resets: use its default nowayout=0). A close without "V" leaves it
running and pets it once more ("watchdog did not stop!"); the kernel does that
close when the slave dies.

The arithmetic (both sides': xcp_control/lease.py).
- D = the lease's deadline, the moment this host must have fenced by. The
  leader restarts at fenced_by = lost_at - detect_bound + fence_after x 1.01
  + DECISION_DELAY (0.75 s) + 0.25 s, and lost_at is no earlier than the
  slave's last confirmation less its transport bound: fenced_by >= D +
  fence_after x RATE_MARGIN + DECISION_DELAY + FIXED_MARGIN (1.0 s). That worst case is a host the leader lost a whole
  transport bound before the slave saw its stream end; when the slave process
  dies its stream ends at once, and the leader restarts a transport bound
  (6 s with the defaults) later still.
- A pet at `now` with timeout T lets the host live until now + T. The keeper
  pets only while now + T <= D + GRACE, GRACE = 0.2 s, under FIXED_MARGIN by
  50 ms for the reset itself (softdog resets from its timer, without a sync).
  So the host is dead by D + GRACE < fenced_by whatever happens to the slave
  after its last pet.
- The last pet a lease allows is made by closing the device without "V" (the
  kernel's release ping is that pet). Otherwise a slave dying in the last T
  seconds of its lease would have the kernel pet once more, late. Until the
  lease is renewed no process holds the device, so nothing can pet it.
- T = floor(R + GRACE - LEAD), R the lease's term (what is left of it right
  after a confirmation: fence_after - transport bound - detect bound, 10 - 6
  - 3 = 1 s with the defaults; a held lease is extended by as much), LEAD = one tick (0.1 s) and 50 ms of
  scheduling, so that every tick may pet. A term under 0.95 s cannot be kept
  with a whole-second watchdog: the keeper does not arm, and says so.
- Each tick starts with the guard's own check (SelfFencing.check, as before
  every SlaveService call), so the lease is confirmed right before each pet
  decision, and at D itself the liveset question goes out at once, not at the
  guard's next 0.25 s tick. When the master tier is down (a majority of peers
  reached, none hears the leader) the guard holds the lease (extends it by
  one term) and the keeper opens and pets the device again: the peers must
  answer within GRACE less RELEASE_AHEAD of D (milliseconds on a LAN; the
  question ends as soon as the answers decide it: ha_guard.peer_asker), or the
  host resets (the safe side, at the cost of its VMs while the master tier is
  down). When a held lease runs out without "keep", the guard gives the slave
  the rejoin window before it fences; D is then the window's end, which the
  leader's quorum proof covers (lease.hold_bound: the reset comes by the last
  "keep" + R + 0.25 + PEER_DEADLINE + REJOIN_WINDOW + GRACE, 0.3 s inside it).

Restarting a slave. One that stops or dies while HA is enabled leaves the
watchdog running: its libvirt domains keep running, the leader counts from the
end of its stream, and only the reset makes a restart elsewhere safe. A new
slave process pets only once the leader has acknowledged it (its lease good
again: the leader then counts the host live, so it restarts nothing); if that
comes later than T (1 s with the defaults: in practice always), the host has
reset and the new slave adopts nothing. A clean stop (SIGTERM) with no domains
left disarms it: stop or move a host's VMs before stopping its slave.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import stat
import struct
import time
from typing import Callable

from xcp_control.lease import lease_origin

log = logging.getLogger(__name__)

WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
MAGIC_CLOSE = b"V"
PET = b"\0"
STAND_IN_ONLY = "XCP_WATCHDOG_STAND_IN_ONLY"  # set: character devices are refused

GRACE = 0.2  # s past the lease deadline the host may live (< lease.FIXED_MARGIN)
INTERVAL = 0.1  # s between two ticks of the keeper
LEAD = INTERVAL + 0.05  # s of the term a pet must leave: one tick plus scheduling
RELEASE_AHEAD = 0.02  # s before the last allowed moment the last pet (the release) is made
MAX_TIMEOUT = 65535  # s: softdog's largest

IDLE, ARMED, PETTED, RELEASED, HELD = "idle", "armed", "petted", "released", "held"


class WatchdogRefused(OSError):
    """A real watchdog where only stand-ins are allowed (tests), or no device."""


def timeout_for(term: float | None) -> int | None:
    """The whole-second timeout that keeps a lease of this term, or None."""
    if term is None:
        return None
    seconds = math.floor(term + GRACE - LEAD + 1e-9)  # 0.95 s is 1 s, float or not
    return min(seconds, MAX_TIMEOUT) if seconds >= 1 else None


def check_device(path: str) -> None:
    """At start-up: the device exists (without opening it: that would arm it)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise WatchdogRefused(f"watchdog device {path}: {exc.strerror} (modprobe softdog "
                              f"creates /dev/watchdog)") from None
    if stat.S_ISCHR(mode) and os.environ.get(STAND_IN_ONLY):
        raise WatchdogRefused(f"watchdog device {path} is a real device and {STAND_IN_ONLY} "
                              f"is set: only stand-ins (a file, a FIFO) may be used here")


class HostWatchdog:
    """One watchdog device (or a stand-in: a plain file, a FIFO)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.timeout: int | None = None  # what the device was last set to
        self._fd: int | None = None

    @property
    def armed(self) -> bool:
        """We hold the device open (it runs, and our death would pet it once)."""
        return self._fd is not None

    def _open(self) -> int:
        check_device(self.device)
        # Non-blocking: a stand-in FIFO without a reader fails instead of hanging the loop.
        return os.open(self.device, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)

    def arm(self, timeout: int) -> int:
        """Open (start) it with this timeout and pet it; the timeout the device took."""
        if self._fd is None:
            self._fd = self._open()
        try:
            actual = self._set_timeout(timeout)
            self._write(PET)
        except OSError:
            self.release()
            raise
        return actual

    def _set_timeout(self, timeout: int) -> int:
        if stat.S_ISCHR(os.fstat(self._fd).st_mode):
            answer = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
            timeout = struct.unpack("i", answer)[0]
        self.timeout = timeout
        return timeout

    def pet(self, timeout: int | None = None) -> None:
        if self._fd is None:
            return
        if timeout is not None and timeout != self.timeout:
            self._set_timeout(timeout)  # the ioctl pets too
        self._write(PET)

    def release(self) -> None:
        """Close without the magic character: it keeps running (and the close pets it)."""
        if self._fd is not None:
            self._close()

    def disarm(self) -> None:
        """The magic close: stop it (opening it first if we do not hold it)."""
        if self._fd is None:
            self._fd = self._open()
        try:
            self._write(MAGIC_CLOSE)
        finally:
            self._close()

    def _write(self, data: bytes) -> None:
        os.write(self._fd, data)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        os.close(fd)


class GuardLease:
    """All the keeper reads from HA's self-fencing guard (ha_guard.SelfFencing)."""

    def __init__(self, guard) -> None:
        self._guard = guard

    async def check(self) -> None:
        await self._guard.check()

    def term(self) -> float:
        """What a fresh lease leaves right after a confirmation (xcp_control/lease.py;
        a held lease is extended by the same hold_extension)."""
        lease = self._guard.lease
        return lease.config.fence_after + lease_origin(0.0, lease.transport_bound,
                                                      lease.config.detect_bound)

    def deadline(self) -> float | None:
        """The lease's deadline, or the rejoin window's end once a held lease ran
        out: the guard keeps the domains until then, and the leader's quorum
        proof (lease.py, 3.) covers it."""
        deadline, rejoin_by = self._guard.lease.deadline(), self._guard.rejoin_by
        if deadline is None or rejoin_by is None:
            return deadline
        return max(deadline, rejoin_by)

    def fenced(self) -> bool:
        return self._guard.fenced


class WatchdogKeeper:
    """Arms the watchdog once the leader says HA is enabled and the lease is
    good; pets it while now + timeout <= deadline + GRACE; makes the last pet
    by releasing it; disarms it when the leader says HA is disabled."""

    def __init__(self, watchdog: HostWatchdog, lease: GuardLease, *,
                 clock: Callable[[], float] = time.monotonic, interval: float = INTERVAL) -> None:
        self.watchdog = watchdog
        self._lease = lease
        self._clock = clock
        self._interval = interval
        self.ha_enabled: bool | None = None  # None until the leader says
        self.running = False  # armed by this process and not disarmed: the kernel counts
        self.pets = 0
        self.last_action = IDLE
        self._refusal = ""  # why it cannot arm (logged once)
        self._too_coarse: int | None = None  # a timeout the device would not take

    @property
    def term(self) -> float:
        return self._lease.term()

    @property
    def timeout(self) -> int | None:
        return timeout_for(self.term)

    def set_ha_enabled(self, enabled: bool) -> None:
        """The leader's word (each HA config): arming waits for a good lease."""
        if enabled == self.ha_enabled:
            return
        self.ha_enabled = enabled
        self._refusal, self._too_coarse = "", None
        if not enabled:
            self._disarm("HA disabled by the leader")

    def _disarm(self, why: str) -> None:
        if not self.running:
            return
        self.running = False
        try:
            self.watchdog.disarm()
        except OSError as exc:  # called from the heartbeat's HA hook: never raise into it
            log.error("host watchdog %s: could not disarm it (%s): the host resets",
                      self.watchdog.device, exc)
            return
        log.warning("host watchdog %s disarmed (magic close): %s", self.watchdog.device, why)

    def tick(self, now: float) -> str:
        """One decision on the lease as the guard has it now; the action taken."""
        if not self.ha_enabled:
            return IDLE
        deadline, timeout = self._lease.deadline(), self.timeout
        if timeout is None:
            self._refuse(f"the lease's term ({self.term:.2f}s) is too short for a "
                         f"whole-second watchdog: raise --fence-after")
            return HELD if self.running else IDLE
        if deadline is None or self._lease.fenced() or now + timeout > deadline + GRACE \
                or timeout == self._too_coarse:
            return HELD if self.running else IDLE
        action = self._pet(timeout)
        if action != IDLE and now >= deadline + GRACE - timeout - RELEASE_AHEAD:
            self.watchdog.release()  # the last pet this lease allows: let nothing pet later
            log.warning("host watchdog %s: last pet of this lease; the host resets in %ds "
                        "unless the lease is renewed", self.watchdog.device, timeout)
            return RELEASED
        return action

    def _pet(self, timeout: int) -> str:
        if self.watchdog.armed:
            self.watchdog.pet(timeout)
            self.pets += 1
            return PETTED
        try:
            actual = self.watchdog.arm(timeout)
        except OSError as exc:  # busy (a watchdog daemon holds it), gone, refused: once
            self._refuse(f"cannot open it: {exc}")
            return IDLE
        if actual > timeout:  # it would reset the host too late: do not use it
            self.running, self._too_coarse = True, timeout
            self._disarm(f"it took a {actual}s timeout for {timeout}s")
            self._refuse(f"the device cannot take a {timeout}s timeout")
            return IDLE
        log.log(logging.INFO if self.running else logging.WARNING,
                "host watchdog %s armed: the host resets %ds after petting stops",
                self.watchdog.device, actual)
        self.running = True
        self.pets += 1
        return ARMED

    def _refuse(self, why: str) -> None:
        if why != self._refusal:
            self._refusal = why
            log.error("host watchdog %s NOT armed although HA is enabled: %s",
                      self.watchdog.device, why)

    def next_wake(self, now: float) -> float:
        """The next tick: one interval on, or sooner for the last pet or the deadline."""
        wake = now + self._interval
        deadline, timeout = self._lease.deadline(), self.timeout
        if self.ha_enabled and deadline is not None and timeout is not None:
            for moment in (deadline + GRACE - timeout - RELEASE_AHEAD, deadline):
                if moment > now:
                    wake = min(wake, moment)
        return wake

    async def step(self) -> float:
        """The guard's check, one decision; when to step again."""
        try:
            await self._lease.check()
        except Exception:  # noqa: BLE001 - the guard logs its own; decide on what it has
            log.exception("lease check failed")
        now = self._clock()
        try:
            self.last_action = self.tick(now)
        except OSError:
            log.exception("host watchdog %s: cannot pet it", self.watchdog.device)
        return self.next_wake(now)

    async def run(self) -> None:
        """Step until cancelled; cancelling leaves it as it is (see stop())."""
        while True:
            wake = await self.step()
            await asyncio.sleep(max(0.0, wake - self._clock()))

    def stop(self, domains_left: bool) -> None:
        """The slave stops. With no domains left nothing can run twice: disarm.
        Otherwise leave it running: the host resets unless a new slave is
        acknowledged first."""
        if not self.running:
            return
        if not domains_left:
            self._disarm("the slave stops with no domains left")
            return
        self.watchdog.release()
        log.warning("host watchdog %s left running: the slave stops with domains while HA "
                    "is enabled; the host resets in %ss unless a new slave is acknowledged "
                    "by the leader first", self.watchdog.device, self.watchdog.timeout)


class NoWatchdog:
    """Without --watchdog-device: nothing to arm. Warns when HA is enabled on a
    backend whose domains outlive the slave."""

    running = False

    def __init__(self, domains_outlive_slave: bool) -> None:
        self._outlive = domains_outlive_slave
        self.ha_enabled: bool | None = None

    def set_ha_enabled(self, enabled: bool) -> None:
        if enabled and not self.ha_enabled and self._outlive:
            log.warning("HA IS ENABLED WITHOUT A HOST WATCHDOG (--watchdog-device): this "
                        "backend's domains outlive the slave, so if it dies or hangs its "
                        "VMs run twice once the leader restarts them elsewhere")
        self.ha_enabled = enabled

    def stop(self, domains_left: bool) -> None:
        pass


def keeper_for(settings, guard, clock: Callable[[], float] = time.monotonic):
    """The slave's keeper: a WatchdogKeeper with --watchdog-device, else NoWatchdog."""
    if not settings.watchdog_device:
        return NoWatchdog(domains_outlive_slave=settings.backend == "libvirt")
    return WatchdogKeeper(HostWatchdog(settings.watchdog_device), GuardLease(guard),
                          clock=clock)
