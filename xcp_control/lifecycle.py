"""Placeholder until the forwarding work lands (issue 4)."""

from __future__ import annotations


class Lifecycle:
    def __init__(self, *args, **kwargs) -> None:
        pass
