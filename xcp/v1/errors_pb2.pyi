from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    HOST_OFFLINE: _ClassVar[ErrorReason]
    CANNOT_CONTACT_HOST: _ClassVar[ErrorReason]
    OPERATION_TIMED_OUT: _ClassVar[ErrorReason]
    HANDLE_INVALID: _ClassVar[ErrorReason]
    INVALID_VALUE: _ClassVar[ErrorReason]
    VM_BAD_POWER_STATE: _ClassVar[ErrorReason]
    HOST_DISABLED: _ClassVar[ErrorReason]
    HOST_NOT_ENOUGH_FREE_MEMORY: _ClassVar[ErrorReason]
    NO_HOSTS_AVAILABLE: _ClassVar[ErrorReason]
    OTHER_OPERATION_IN_PROGRESS: _ClassVar[ErrorReason]
    INTERNAL_ERROR: _ClassVar[ErrorReason]
    EVENTS_LOST: _ClassVar[ErrorReason]
    HOST_IS_LIVE: _ClassVar[ErrorReason]
    SESSION_AUTHENTICATION_FAILED: _ClassVar[ErrorReason]
    RBAC_PERMISSION_DENIED: _ClassVar[ErrorReason]
    TOO_BUSY: _ClassVar[ErrorReason]
    HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN: _ClassVar[ErrorReason]
    HOST_IS_SLAVE: _ClassVar[ErrorReason]
    STALE_MASTER: _ClassVar[ErrorReason]
    HYPERVISOR_UNAVAILABLE: _ClassVar[ErrorReason]
    HOST_FENCED: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
HOST_OFFLINE: ErrorReason
CANNOT_CONTACT_HOST: ErrorReason
OPERATION_TIMED_OUT: ErrorReason
HANDLE_INVALID: ErrorReason
INVALID_VALUE: ErrorReason
VM_BAD_POWER_STATE: ErrorReason
HOST_DISABLED: ErrorReason
HOST_NOT_ENOUGH_FREE_MEMORY: ErrorReason
NO_HOSTS_AVAILABLE: ErrorReason
OTHER_OPERATION_IN_PROGRESS: ErrorReason
INTERNAL_ERROR: ErrorReason
EVENTS_LOST: ErrorReason
HOST_IS_LIVE: ErrorReason
SESSION_AUTHENTICATION_FAILED: ErrorReason
RBAC_PERMISSION_DENIED: ErrorReason
TOO_BUSY: ErrorReason
HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN: ErrorReason
HOST_IS_SLAVE: ErrorReason
STALE_MASTER: ErrorReason
HYPERVISOR_UNAVAILABLE: ErrorReason
HOST_FENCED: ErrorReason
