"""SlaveService: the domain operations the master forwards to this host.
Thin: proto in, hypervisor call, proto out; the backend raises catalogued
errors, which pass through unchanged."""

from __future__ import annotations

from typing import Callable

from xcp.v1 import slave_service_pb2 as pb
from xcp.v1 import slave_service_pb2_grpc as pb_grpc
from xcp_control import errors
from xcp_control.errors import rpc_method
from xcp_control.slave.hypervisor import BootSpec, Hypervisor

SLAVE_SERVICE = pb.DESCRIPTOR.services_by_name["SlaveService"].full_name


def _vm_uuid(request) -> str:
    if not request.vm_uuid:
        raise errors.invalid_value("vm_uuid", request.vm_uuid)
    return request.vm_uuid


class SlaveServicer(pb_grpc.SlaveServiceServicer):
    """Proto in, hypervisor call, proto out; errors come from the backend."""

    def __init__(self, hypervisor: Hypervisor,
                 peer_status: Callable[[], tuple[bool, float]] = lambda: (False, 0.0),
                 follow_leader: Callable[[int, str], bool] | None = None) -> None:
        self._hv = hypervisor
        self._peer_status = peer_status  # HA's liveset rule (ha_guard.py)
        self._follow_leader = follow_leader  # several masters: (epoch, leader) -> moved

    @rpc_method
    async def StartDomain(self, request: pb.StartDomainRequest, context) -> pb.Domain:
        vm_uuid = _vm_uuid(request)
        if request.memory <= 0:
            raise errors.invalid_value("memory", request.memory)
        if request.vcpus < 1:
            raise errors.invalid_value("vcpus", request.vcpus)
        boot = BootSpec(request.pv_kernel, request.pv_ramdisk, request.pv_args)
        domain = await self._hv.start(vm_uuid, request.memory, request.vcpus, request.paused,
                                      boot)
        return domain.to_proto()

    @rpc_method
    async def ShutdownDomain(self, request: pb.ShutdownDomainRequest, context) -> pb.Domain:
        return (await self._hv.shutdown(_vm_uuid(request), request.force)).to_proto()

    @rpc_method
    async def RebootDomain(self, request: pb.RebootDomainRequest, context) -> pb.Domain:
        return (await self._hv.reboot(_vm_uuid(request), request.force)).to_proto()

    @rpc_method
    async def PauseDomain(self, request: pb.PauseDomainRequest, context) -> pb.Domain:
        return (await self._hv.pause(_vm_uuid(request))).to_proto()

    @rpc_method
    async def UnpauseDomain(self, request: pb.UnpauseDomainRequest, context) -> pb.Domain:
        return (await self._hv.unpause(_vm_uuid(request))).to_proto()

    @rpc_method
    async def DestroyDomain(self, request: pb.DestroyDomainRequest,
                            context) -> pb.DestroyDomainResponse:
        await self._hv.destroy(_vm_uuid(request))
        return pb.DestroyDomainResponse()

    @rpc_method
    async def ListDomains(self, request: pb.ListDomainsRequest, context) -> pb.ListDomainsResponse:
        domains = await self._hv.list_domains()
        return pb.ListDomainsResponse(domains=[d.to_proto() for d in domains],
                                      memory_total=self._hv.memory_total,
                                      memory_free=self._hv.memory_free)

    @rpc_method
    async def SetEnabled(self, request: pb.SetEnabledRequest, context) -> pb.SetEnabledResponse:
        return pb.SetEnabledResponse(enabled=await self._hv.set_enabled(request.enabled))

    @rpc_method
    async def PeerStatus(self, request, context) -> pb.PeerStatusResponse:
        hears, connected_for = self._peer_status()
        return pb.PeerStatusResponse(hears_leader=hears,
                                     connected_for_ms=round(connected_for * 1000))

    @rpc_method
    async def FollowLeader(self, request: pb.FollowLeaderRequest,
                           context) -> pb.FollowLeaderResponse:
        if request.epoch <= 0:
            raise errors.invalid_value("epoch", request.epoch)
        if not request.leader:
            raise errors.invalid_value("leader", request.leader)
        moved = self._follow_leader is not None and self._follow_leader(request.epoch,
                                                                          request.leader)
        return pb.FollowLeaderResponse(moved=moved)
