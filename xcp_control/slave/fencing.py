"""The slave's side of fencing: a call from a deposed leader is refused.

With several masters on etcd every leader has an epoch (its leader key's
create revision, strictly increasing), carried on each forwarded call
(metadata `xcp-epoch`) and on the Hello answer of the heartbeat stream. The
slave remembers the newest epoch it has seen and refuses any call that
changes something from an older one with STALE_MASTER: a leader resumed after
a SIGSTOP, that has not yet noticed it was replaced, can command nothing.
Read-only ListDomains needs no epoch. Calls without an epoch come from a
single master (no etcd) and are taken as before.
"""

from __future__ import annotations

import grpc

from xcp_control import errors

EPOCH_HEADER = "xcp-epoch"  # the same name as master/forwarding.py's
READ_ONLY = frozenset({"/xcp.v1.SlaveService/ListDomains"})


class EpochFence:
    """The newest leader epoch this slave has seen; plain logic."""

    def __init__(self) -> None:
        self.newest = 0

    def seen(self, epoch: int) -> None:
        if epoch > self.newest:
            self.newest = epoch

    def admit(self, epoch: int) -> None:
        """Take a call from `epoch`; STALE_MASTER if a newer one was seen."""
        if epoch < self.newest:
            raise errors.stale_master(epoch, self.newest)
        self.seen(epoch)


def _epoch_of(metadata) -> int | None:
    for key, value in metadata or ():
        if key == EPOCH_HEADER:
            return int(value) if value.isdigit() else -1
    return None


class FenceInterceptor(grpc.aio.ServerInterceptor):
    """Admits each SlaveService call through the EpochFence, before its handler."""

    def __init__(self, fence: EpochFence) -> None:
        self._fence = fence

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method in READ_ONLY or handler.request_streaming \
                or handler.response_streaming:
            return handler
        epoch = _epoch_of(details.invocation_metadata)
        if epoch is None:
            return handler
        behavior, fence = handler.unary_unary, self._fence

        async def run(request, context):
            try:
                fence.admit(epoch)
            except errors.XcpError as err:
                await errors.abort(context, err)
            return await behavior(request, context)
        return grpc.unary_unary_rpc_method_handler(
            run, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
