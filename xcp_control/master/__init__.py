"""The pool master: store, liveness, forwarding and the API (`xcp-master`).

`server.py` wires the pieces together; every other module is one concern.
"""


def main(argv: list[str] | None = None) -> int:
    """The `xcp-master` console script (imported lazily: importing one master
    module does not load them all)."""
    from xcp_control.master.server import main as run

    return run(argv)
