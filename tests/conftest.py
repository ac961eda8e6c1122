"""Every test process, and every master and slave a test starts (they inherit
the environment), refuses a real watchdog device: a slave given one would arm
it, and a reset of this machine (CI runs as root) would kill the run. Tests use
stand-ins (tests/support/watchdog.py).

A SIGTERM (a `timeout`, CI stopping a job) ends the run as pytest ends it on
Ctrl-C, so that fixtures tear down and the harness's atexit clean-up (etcd
members, network namespaces, processes) runs: by default SIGTERM skips both."""

import os
import signal

from xcp_control.slave.watchdog import STAND_IN_ONLY

os.environ[STAND_IN_ONLY] = "1"


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _terminated)
