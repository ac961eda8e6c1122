"""The host agent: SlaveService over a hypervisor backend, and the heartbeat
client that keeps the master informed (`xcp-slave`)."""


def main(argv: list[str] | None = None) -> int:
    """The `xcp-slave` console script (imported lazily)."""
    from xcp_control.slave.server import main as run

    return run(argv)
