"""Checks of client input: each failure is INVALID_VALUE naming the field."""

from __future__ import annotations

import uuid as uuid_module
from typing import Mapping, NamedTuple

from xcp_control import errors
from xcp.v1 import datamodel_pb2

MAX_NAME = 255
MAX_MEMORY = 1 << 50  # 1 PiB: larger is a typo, not a VM
MAX_VCPUS = 1024
MAX_PAGE = 100_000
MAX_CONFIG_ENTRIES = 64
MAX_CONFIG_KEY = 255
MAX_CONFIG_VALUE = 4096
MAX_BOOT_FIELD = 4096  # pv_kernel, pv_ramdisk, pv_args


invalid = errors.invalid_value  # the one INVALID_VALUE constructor, under its local name


def uuid(field: str, value: str) -> str:
    """A canonical (lower-case, hyphenated) uuid, or INVALID_VALUE."""
    try:
        parsed = uuid_module.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise invalid(field, value) from None
    if str(parsed) != value.lower():
        raise invalid(field, value)
    return str(parsed)


def optional_uuid(field: str, value: str) -> str:
    return uuid(field, value) if value else ""


def name(field: str, value: str) -> str:
    if not value.strip() or len(value) > MAX_NAME or not value.isprintable():
        raise invalid(field, value)
    return value


def count(field: str, value: int, lowest: int, highest: int) -> int:
    if not lowest <= value <= highest:
        raise invalid(field, value)
    return value


def power_state(field: str, value: int, allow_unspecified: bool) -> int:
    known = value in datamodel_pb2.PowerState.values()
    if not known or (value == datamodel_pb2.POWER_STATE_UNSPECIFIED and not allow_unspecified):
        raise invalid(field, value)
    return value


def other_config(field: str, value: Mapping[str, str]) -> dict[str, str]:
    if len(value) > MAX_CONFIG_ENTRIES:
        raise invalid(field, f"{len(value)} entries")
    for key, item in value.items():
        if not key or len(key) > MAX_CONFIG_KEY or len(item) > MAX_CONFIG_VALUE:
            raise invalid(f"{field}.{key[:errors.SHOWN]}", item)
    return dict(value)


MAX_RESTART_ORDER = 1 << 31


def ha_restart_priority(field: str, value: int) -> int:
    if value not in datamodel_pb2.HaRestartPriority.values():
        raise invalid(field, value)
    return value


def ha_restart_order(field: str, value: int) -> int:
    return count(field, value, -MAX_RESTART_ORDER, MAX_RESTART_ORDER)
class Boot(NamedTuple):
    """A VM's direct kernel boot: pv_kernel, pv_ramdisk, pv_args."""

    kernel: str = ""
    ramdisk: str = ""
    args: str = ""


NO_BOOT = Boot()


def boot(request) -> Boot:
    """pv_kernel, pv_ramdisk, pv_args of a request: bounded and printable. The
    paths are the hosts'; only the slave that boots the VM can check them."""
    checked = []
    for field in ("pv_kernel", "pv_ramdisk", "pv_args"):
        value = getattr(request, field)
        if len(value) > MAX_BOOT_FIELD or not value.isprintable():
            raise invalid(field, value)
        checked.append(value)
    return Boot(*checked)
