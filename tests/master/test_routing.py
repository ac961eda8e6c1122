"""What a follower sends the leader with a call it passes on (routing.py):
the caller's metadata, minus transport headers and the caller's own
credentials; the client it authenticated named for delegation; never a
delegation header of the caller's own."""

from __future__ import annotations

import contextvars

from xcp_control.master import routing
from xcp_control.security.auth import CALLER, Identity


class Context:
    def __init__(self, metadata) -> None:
        self._metadata = metadata

    def invocation_metadata(self):
        return self._metadata


INCOMING = [(":authority", "m1"), ("user-agent", "grpc-python"), ("x-request", "42"),
            ("authorization", "Bearer secret"), ("xcp-on-behalf-of", "pool-admin:mallory")]


def outgoing(caller: Identity | None) -> list[tuple[str, str]]:
    def run():
        CALLER.set(caller)
        return routing._outgoing(Context(INCOMING), "127.0.0.1:7001")
    return contextvars.copy_context().run(run)


def test_with_tls_the_leader_is_told_whom_the_call_is_for_and_no_credential_passes():
    sent = outgoing(Identity("viewer", "read-only"))
    assert sent == [("x-request", "42"), ("xcp-on-behalf-of", "read-only:viewer"),
                    (routing.PASSED_ON, "127.0.0.1:7001")]


def test_without_tls_metadata_passes_but_a_forged_delegation_never_does():
    sent = outgoing(None)
    assert sent == [("x-request", "42"), ("authorization", "Bearer secret"),
                    (routing.PASSED_ON, "127.0.0.1:7001")]
