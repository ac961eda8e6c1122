import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PowerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_STATE_UNSPECIFIED: _ClassVar[PowerState]
    HALTED: _ClassVar[PowerState]
    RUNNING: _ClassVar[PowerState]
    PAUSED: _ClassVar[PowerState]
    SUSPENDED: _ClassVar[PowerState]

class HaRestartPriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HA_RESTART_PRIORITY_UNSPECIFIED: _ClassVar[HaRestartPriority]
    RESTART: _ClassVar[HaRestartPriority]
    BEST_EFFORT: _ClassVar[HaRestartPriority]
POWER_STATE_UNSPECIFIED: PowerState
HALTED: PowerState
RUNNING: PowerState
PAUSED: PowerState
SUSPENDED: PowerState
HA_RESTART_PRIORITY_UNSPECIFIED: HaRestartPriority
RESTART: HaRestartPriority
BEST_EFFORT: HaRestartPriority

class Host(_message.Message):
    __slots__ = ("uuid", "name_label", "address", "enabled", "metrics", "other_config", "fence_after_ms", "ha_witnesses", "ha_witness_version", "ha_witnesses_pending", "ha_witness_pending_version", "ha_armed_generation")
    class OtherConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_LABEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OTHER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    FENCE_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    HA_WITNESSES_FIELD_NUMBER: _ClassVar[int]
    HA_WITNESS_VERSION_FIELD_NUMBER: _ClassVar[int]
    HA_WITNESSES_PENDING_FIELD_NUMBER: _ClassVar[int]
    HA_WITNESS_PENDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    HA_ARMED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    name_label: str
    address: str
    enabled: bool
    metrics: str
    other_config: _containers.ScalarMap[str, str]
    fence_after_ms: int
    ha_witnesses: _containers.RepeatedScalarFieldContainer[str]
    ha_witness_version: int
    ha_witnesses_pending: _containers.RepeatedScalarFieldContainer[str]
    ha_witness_pending_version: int
    ha_armed_generation: int
    def __init__(self, uuid: _Optional[str] = ..., name_label: _Optional[str] = ..., address: _Optional[str] = ..., enabled: _Optional[bool] = ..., metrics: _Optional[str] = ..., other_config: _Optional[_Mapping[str, str]] = ..., fence_after_ms: _Optional[int] = ..., ha_witnesses: _Optional[_Iterable[str]] = ..., ha_witness_version: _Optional[int] = ..., ha_witnesses_pending: _Optional[_Iterable[str]] = ..., ha_witness_pending_version: _Optional[int] = ..., ha_armed_generation: _Optional[int] = ...) -> None: ...

class HostMetrics(_message.Message):
    __slots__ = ("uuid", "host", "live", "last_updated", "memory_total", "memory_free")
    UUID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    host: str
    live: bool
    last_updated: _timestamp_pb2.Timestamp
    memory_total: int
    memory_free: int
    def __init__(self, uuid: _Optional[str] = ..., host: _Optional[str] = ..., live: _Optional[bool] = ..., last_updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., memory_total: _Optional[int] = ..., memory_free: _Optional[int] = ...) -> None: ...

class VM(_message.Message):
    __slots__ = ("uuid", "name_label", "power_state", "resident_on", "affinity", "memory", "vcpus", "other_config", "ha_restart_priority", "ha_restart_order", "ha_restart_pending", "pv_kernel", "pv_ramdisk", "pv_args")
    class OtherConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_LABEL_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_ON_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    OTHER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    HA_RESTART_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HA_RESTART_ORDER_FIELD_NUMBER: _ClassVar[int]
    HA_RESTART_PENDING_FIELD_NUMBER: _ClassVar[int]
    PV_KERNEL_FIELD_NUMBER: _ClassVar[int]
    PV_RAMDISK_FIELD_NUMBER: _ClassVar[int]
    PV_ARGS_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    name_label: str
    power_state: PowerState
    resident_on: str
    affinity: str
    memory: int
    vcpus: int
    other_config: _containers.ScalarMap[str, str]
    ha_restart_priority: HaRestartPriority
    ha_restart_order: int
    ha_restart_pending: bool
    pv_kernel: str
    pv_ramdisk: str
    pv_args: str
    def __init__(self, uuid: _Optional[str] = ..., name_label: _Optional[str] = ..., power_state: _Optional[_Union[PowerState, str]] = ..., resident_on: _Optional[str] = ..., affinity: _Optional[str] = ..., memory: _Optional[int] = ..., vcpus: _Optional[int] = ..., other_config: _Optional[_Mapping[str, str]] = ..., ha_restart_priority: _Optional[_Union[HaRestartPriority, str]] = ..., ha_restart_order: _Optional[int] = ..., ha_restart_pending: _Optional[bool] = ..., pv_kernel: _Optional[str] = ..., pv_ramdisk: _Optional[str] = ..., pv_args: _Optional[str] = ...) -> None: ...

class Pool(_message.Message):
    __slots__ = ("uuid", "name_label", "master", "epoch", "masters", "ha_enabled", "ha_host_failures_to_tolerate", "ha_plan_exists_for", "ha_generation")
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_LABEL_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MASTERS_FIELD_NUMBER: _ClassVar[int]
    HA_ENABLED_FIELD_NUMBER: _ClassVar[int]
    HA_HOST_FAILURES_TO_TOLERATE_FIELD_NUMBER: _ClassVar[int]
    HA_PLAN_EXISTS_FOR_FIELD_NUMBER: _ClassVar[int]
    HA_GENERATION_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    name_label: str
    master: str
    epoch: int
    masters: _containers.RepeatedScalarFieldContainer[str]
    ha_enabled: bool
    ha_host_failures_to_tolerate: int
    ha_plan_exists_for: int
    ha_generation: int
    def __init__(self, uuid: _Optional[str] = ..., name_label: _Optional[str] = ..., master: _Optional[str] = ..., epoch: _Optional[int] = ..., masters: _Optional[_Iterable[str]] = ..., ha_enabled: _Optional[bool] = ..., ha_host_failures_to_tolerate: _Optional[int] = ..., ha_plan_exists_for: _Optional[int] = ..., ha_generation: _Optional[int] = ...) -> None: ...
