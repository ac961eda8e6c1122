from xcp.v1 import datamodel_pb2 as _datamodel_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FollowLeaderRequest(_message.Message):
    __slots__ = ("epoch", "leader")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    leader: str
    def __init__(self, epoch: _Optional[int] = ..., leader: _Optional[str] = ...) -> None: ...

class FollowLeaderResponse(_message.Message):
    __slots__ = ("moved",)
    MOVED_FIELD_NUMBER: _ClassVar[int]
    moved: bool
    def __init__(self, moved: _Optional[bool] = ...) -> None: ...

class PeerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatusResponse(_message.Message):
    __slots__ = ("hears_leader", "connected_for_ms")
    HEARS_LEADER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FOR_MS_FIELD_NUMBER: _ClassVar[int]
    hears_leader: bool
    connected_for_ms: int
    def __init__(self, hears_leader: _Optional[bool] = ..., connected_for_ms: _Optional[int] = ...) -> None: ...

class Domain(_message.Message):
    __slots__ = ("vm_uuid", "state", "memory", "vcpus")
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    state: _datamodel_pb2.PowerState
    memory: int
    vcpus: int
    def __init__(self, vm_uuid: _Optional[str] = ..., state: _Optional[_Union[_datamodel_pb2.PowerState, str]] = ..., memory: _Optional[int] = ..., vcpus: _Optional[int] = ...) -> None: ...

class StartDomainRequest(_message.Message):
    __slots__ = ("vm_uuid", "memory", "vcpus", "paused", "pv_kernel", "pv_ramdisk", "pv_args")
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PV_KERNEL_FIELD_NUMBER: _ClassVar[int]
    PV_RAMDISK_FIELD_NUMBER: _ClassVar[int]
    PV_ARGS_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    memory: int
    vcpus: int
    paused: bool
    pv_kernel: str
    pv_ramdisk: str
    pv_args: str
    def __init__(self, vm_uuid: _Optional[str] = ..., memory: _Optional[int] = ..., vcpus: _Optional[int] = ..., paused: _Optional[bool] = ..., pv_kernel: _Optional[str] = ..., pv_ramdisk: _Optional[str] = ..., pv_args: _Optional[str] = ...) -> None: ...

class ShutdownDomainRequest(_message.Message):
    __slots__ = ("vm_uuid", "force")
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    force: bool
    def __init__(self, vm_uuid: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RebootDomainRequest(_message.Message):
    __slots__ = ("vm_uuid", "force")
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    force: bool
    def __init__(self, vm_uuid: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class PauseDomainRequest(_message.Message):
    __slots__ = ("vm_uuid",)
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    def __init__(self, vm_uuid: _Optional[str] = ...) -> None: ...

class UnpauseDomainRequest(_message.Message):
    __slots__ = ("vm_uuid",)
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    def __init__(self, vm_uuid: _Optional[str] = ...) -> None: ...

class DestroyDomainRequest(_message.Message):
    __slots__ = ("vm_uuid",)
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    def __init__(self, vm_uuid: _Optional[str] = ...) -> None: ...

class DestroyDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDomainsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDomainsResponse(_message.Message):
    __slots__ = ("domains", "memory_total", "memory_free")
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[Domain]
    memory_total: int
    memory_free: int
    def __init__(self, domains: _Optional[_Iterable[_Union[Domain, _Mapping]]] = ..., memory_total: _Optional[int] = ..., memory_free: _Optional[int] = ...) -> None: ...

class SetEnabledRequest(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class SetEnabledResponse(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...
