from google.protobuf import field_mask_pb2 as _field_mask_pb2
from xcp.v1 import datamodel_pb2 as _datamodel_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateVMRequest(_message.Message):
    __slots__ = ("name_label", "memory", "vcpus", "affinity", "other_config", "pv_kernel", "pv_ramdisk", "pv_args", "ha_restart_priority", "ha_restart_order")
    class OtherConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_LABEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    OTHER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    PV_KERNEL_FIELD_NUMBER: _ClassVar[int]
    PV_RAMDISK_FIELD_NUMBER: _ClassVar[int]
    PV_ARGS_FIELD_NUMBER: _ClassVar[int]
    HA_RESTART_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HA_RESTART_ORDER_FIELD_NUMBER: _ClassVar[int]
    name_label: str
    memory: int
    vcpus: int
    affinity: str
    other_config: _containers.ScalarMap[str, str]
    pv_kernel: str
    pv_ramdisk: str
    pv_args: str
    ha_restart_priority: _datamodel_pb2.HaRestartPriority
    ha_restart_order: int
    def __init__(self, name_label: _Optional[str] = ..., memory: _Optional[int] = ..., vcpus: _Optional[int] = ..., affinity: _Optional[str] = ..., other_config: _Optional[_Mapping[str, str]] = ..., pv_kernel: _Optional[str] = ..., pv_ramdisk: _Optional[str] = ..., pv_args: _Optional[str] = ..., ha_restart_priority: _Optional[_Union[_datamodel_pb2.HaRestartPriority, str]] = ..., ha_restart_order: _Optional[int] = ...) -> None: ...

class UpdateVMRequest(_message.Message):
    __slots__ = ("vm", "update_mask")
    VM_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    vm: _datamodel_pb2.VM
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, vm: _Optional[_Union[_datamodel_pb2.VM, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class GetVMRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class ListVMsRequest(_message.Message):
    __slots__ = ("host", "power_state", "page_size", "page_token")
    HOST_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host: str
    power_state: _datamodel_pb2.PowerState
    page_size: int
    page_token: str
    def __init__(self, host: _Optional[str] = ..., power_state: _Optional[_Union[_datamodel_pb2.PowerState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[_datamodel_pb2.VM]
    next_page_token: str
    def __init__(self, vms: _Optional[_Iterable[_Union[_datamodel_pb2.VM, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DestroyVMRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class DestroyVMResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartVMRequest(_message.Message):
    __slots__ = ("uuid", "host", "paused")
    UUID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    host: str
    paused: bool
    def __init__(self, uuid: _Optional[str] = ..., host: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class ShutdownVMRequest(_message.Message):
    __slots__ = ("uuid", "force")
    UUID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    force: bool
    def __init__(self, uuid: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RebootVMRequest(_message.Message):
    __slots__ = ("uuid", "force")
    UUID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    force: bool
    def __init__(self, uuid: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class PauseVMRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class UnpauseVMRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...
