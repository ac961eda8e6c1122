"""`python -m xcp_control.slave`: the same as the `xcp-slave` command."""

import sys

from xcp_control.slave import main

sys.exit(main())
