"""`xcp`: the command-line client of the xcp master, in the spirit of xapi's `xe`.

    render.py  tables, records, event lines, JSON, error lines (pure functions)
    client.py  the channel to the master, deadlines, errors -> exit codes
    app.py     arguments, one function per command, main()
"""

from xcp_control.cli.app import main

__all__ = ["main"]
