"""Every test process, and every master and slave a test starts (they inherit
the environment), refuses a real watchdog device: a slave given one would arm
it, and a reset of this machine (CI runs as root) would kill the run. Tests use
stand-ins (tests/support/watchdog.py)."""

import os

from xcp_control.slave.watchdog import STAND_IN_ONLY

os.environ[STAND_IN_ONLY] = "1"
