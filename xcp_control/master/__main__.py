"""`python -m xcp_control.master`: the same as the `xcp-master` command."""

import sys

from xcp_control.master import main

sys.exit(main())
