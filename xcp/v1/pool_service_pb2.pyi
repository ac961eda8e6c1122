from xcp.v1 import datamodel_pb2 as _datamodel_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetPoolRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetHaConfigRequest(_message.Message):
    __slots__ = ("enabled", "host_failures_to_tolerate")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    HOST_FAILURES_TO_TOLERATE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    host_failures_to_tolerate: int
    def __init__(self, enabled: _Optional[bool] = ..., host_failures_to_tolerate: _Optional[int] = ...) -> None: ...
