"""Placeholder until the forwarding work lands (issue 4)."""


class Forwarder:
    def __init__(self, *args, **kwargs) -> None:
        pass

    async def close(self) -> None:
        pass
