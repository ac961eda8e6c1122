from xcp.v1 import datamodel_pb2 as _datamodel_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class GetPoolRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
