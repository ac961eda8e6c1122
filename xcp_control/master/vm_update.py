"""UpdateVM (AIP-134): which VM fields a client may change, how each is
checked, and which need the VM HALTED, as one table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from xcp_control import errors, validation
from xcp_control.model import copy, state_name
from xcp.v1 import datamodel_pb2 as dm


@dataclass(frozen=True)
class Updatable:
    check: Callable[[str, object], object]  # (field, value) -> the value to store
    halted_only: bool = False  # memory and vCPUs change only while the VM is off


UPDATABLE: dict[str, Updatable] = {
    "name_label": Updatable(validation.name),
    "affinity": Updatable(validation.optional_uuid),
    "other_config": Updatable(validation.other_config),
    "ha_restart_priority": Updatable(validation.ha_restart_priority),
    "ha_restart_order": Updatable(validation.ha_restart_order),
    "memory": Updatable(lambda f, v: validation.count(f, v, 1, validation.MAX_MEMORY), True),
    "vcpus": Updatable(lambda f, v: validation.count(f, v, 1, validation.MAX_VCPUS), True),
}


def paths_of(new: dm.VM, mask: list[str]) -> list[str]:
    """The paths to apply: the mask's, or (empty mask, AIP-134) every field set
    in `new` but its uuid. Unknown or read-only paths are INVALID_VALUE."""
    paths = list(dict.fromkeys(mask)) or [f.name for f, _ in new.ListFields() if f.name != "uuid"]
    for path in paths:
        if path not in UPDATABLE:
            raise errors.invalid_value("update_mask", path)
    return paths


def updated(current: dm.VM, new: dm.VM, paths: list[str]) -> dm.VM:
    """A copy of `current` with `paths` taken from `new`, each checked."""
    out = copy(current)
    for path in paths:
        rule = UPDATABLE[path]
        if rule.halted_only and current.power_state != dm.HALTED and \
                getattr(current, path) != getattr(new, path):
            raise errors.vm_bad_power_state(current.uuid, "HALTED",
                                            state_name(current.power_state))
        value = rule.check(path, getattr(new, path))
        if path == "other_config":
            out.other_config.clear()
            out.other_config.update(value)
        else:
            setattr(out, path, value)
    return out
