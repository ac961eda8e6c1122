from xcp.v1 import slave_service_pb2 as _slave_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatRequest(_message.Message):
    __slots__ = ("hello", "beat", "goodbye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BEAT_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    beat: Beat
    goodbye: Goodbye
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., beat: _Optional[_Union[Beat, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host_uuid", "name_label", "address", "memory_total", "memory_free", "domains", "domains_digest", "enabled", "hypervisor_unavailable", "fence_after_ms", "fenced", "transport_bound_ms", "ha_generation", "ha_witness_version")
    HOST_UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_LABEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FENCE_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_BOUND_MS_FIELD_NUMBER: _ClassVar[int]
    HA_GENERATION_FIELD_NUMBER: _ClassVar[int]
    HA_WITNESS_VERSION_FIELD_NUMBER: _ClassVar[int]
    host_uuid: str
    name_label: str
    address: str
    memory_total: int
    memory_free: int
    domains: _containers.RepeatedCompositeFieldContainer[_slave_service_pb2.Domain]
    domains_digest: str
    enabled: bool
    hypervisor_unavailable: bool
    fence_after_ms: int
    fenced: bool
    transport_bound_ms: int
    ha_generation: int
    ha_witness_version: int
    def __init__(self, host_uuid: _Optional[str] = ..., name_label: _Optional[str] = ..., address: _Optional[str] = ..., memory_total: _Optional[int] = ..., memory_free: _Optional[int] = ..., domains: _Optional[_Iterable[_Union[_slave_service_pb2.Domain, _Mapping]]] = ..., domains_digest: _Optional[str] = ..., enabled: _Optional[bool] = ..., hypervisor_unavailable: _Optional[bool] = ..., fence_after_ms: _Optional[int] = ..., fenced: _Optional[bool] = ..., transport_bound_ms: _Optional[int] = ..., ha_generation: _Optional[int] = ..., ha_witness_version: _Optional[int] = ...) -> None: ...

class Beat(_message.Message):
    __slots__ = ("seq", "memory_free", "domains_digest", "domains_included", "domains", "hypervisor_unavailable", "connected_for_ms", "ha_ack", "ha_generation", "ha_witness_version")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FOR_MS_FIELD_NUMBER: _ClassVar[int]
    HA_ACK_FIELD_NUMBER: _ClassVar[int]
    HA_GENERATION_FIELD_NUMBER: _ClassVar[int]
    HA_WITNESS_VERSION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    memory_free: int
    domains_digest: str
    domains_included: bool
    domains: _containers.RepeatedCompositeFieldContainer[_slave_service_pb2.Domain]
    hypervisor_unavailable: bool
    connected_for_ms: int
    ha_ack: bool
    ha_generation: int
    ha_witness_version: int
    def __init__(self, seq: _Optional[int] = ..., memory_free: _Optional[int] = ..., domains_digest: _Optional[str] = ..., domains_included: _Optional[bool] = ..., domains: _Optional[_Iterable[_Union[_slave_service_pb2.Domain, _Mapping]]] = ..., hypervisor_unavailable: _Optional[bool] = ..., connected_for_ms: _Optional[int] = ..., ha_ack: _Optional[bool] = ..., ha_generation: _Optional[int] = ..., ha_witness_version: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("interval_ms", "domains_ack", "send_domains", "report_interval_ms", "epoch", "ha_config", "ha_enabled", "fence_after_ms", "detect_bound_ms", "peers", "report_now", "ha_generation", "witness_version")
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_ACK_FIELD_NUMBER: _ClassVar[int]
    SEND_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    HA_ENABLED_FIELD_NUMBER: _ClassVar[int]
    FENCE_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    DETECT_BOUND_MS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    REPORT_NOW_FIELD_NUMBER: _ClassVar[int]
    HA_GENERATION_FIELD_NUMBER: _ClassVar[int]
    WITNESS_VERSION_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    domains_ack: str
    send_domains: bool
    report_interval_ms: int
    epoch: int
    ha_config: bool
    ha_enabled: bool
    fence_after_ms: int
    detect_bound_ms: int
    peers: _containers.RepeatedCompositeFieldContainer[HaPeer]
    report_now: bool
    ha_generation: int
    witness_version: int
    def __init__(self, interval_ms: _Optional[int] = ..., domains_ack: _Optional[str] = ..., send_domains: _Optional[bool] = ..., report_interval_ms: _Optional[int] = ..., epoch: _Optional[int] = ..., ha_config: _Optional[bool] = ..., ha_enabled: _Optional[bool] = ..., fence_after_ms: _Optional[int] = ..., detect_bound_ms: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[HaPeer, _Mapping]]] = ..., report_now: _Optional[bool] = ..., ha_generation: _Optional[int] = ..., witness_version: _Optional[int] = ...) -> None: ...

class HaPeer(_message.Message):
    __slots__ = ("host_uuid", "address")
    HOST_UUID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    host_uuid: str
    address: str
    def __init__(self, host_uuid: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...
