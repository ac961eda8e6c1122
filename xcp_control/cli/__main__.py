import sys

from xcp_control.cli.app import main

sys.exit(main())
