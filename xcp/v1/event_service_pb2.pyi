from xcp.v1 import datamodel_pb2 as _datamodel_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[Op]
    ADD: _ClassVar[Op]
    MOD: _ClassVar[Op]
    DEL: _ClassVar[Op]
    SYNC: _ClassVar[Op]
OP_UNSPECIFIED: Op
ADD: Op
MOD: Op
DEL: Op
SYNC: Op

class WatchRequest(_message.Message):
    __slots__ = ("classes", "token")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    token: str
    def __init__(self, classes: _Optional[_Iterable[str]] = ..., token: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("token", "op", "class_name", "uuid", "host", "host_metrics", "vm", "pool")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    HOST_METRICS_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    token: str
    op: Op
    class_name: str
    uuid: str
    host: _datamodel_pb2.Host
    host_metrics: _datamodel_pb2.HostMetrics
    vm: _datamodel_pb2.VM
    pool: _datamodel_pb2.Pool
    def __init__(self, token: _Optional[str] = ..., op: _Optional[_Union[Op, str]] = ..., class_name: _Optional[str] = ..., uuid: _Optional[str] = ..., host: _Optional[_Union[_datamodel_pb2.Host, _Mapping]] = ..., host_metrics: _Optional[_Union[_datamodel_pb2.HostMetrics, _Mapping]] = ..., vm: _Optional[_Union[_datamodel_pb2.VM, _Mapping]] = ..., pool: _Optional[_Union[_datamodel_pb2.Pool, _Mapping]] = ...) -> None: ...
