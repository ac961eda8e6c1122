"""UpdateVM's field table: what may change, how it is checked, when."""

from __future__ import annotations

import pytest

from xcp.v1 import datamodel_pb2 as dm
from xcp_control.errors import XcpError
from xcp_control.master.vm_update import paths_of, updated

HALTED_VM = dm.VM(uuid="v", name_label="web", power_state=dm.HALTED, memory=1 << 30, vcpus=1)


def test_an_empty_mask_means_every_field_set():
    new = dm.VM(uuid="v", ha_restart_priority=dm.RESTART, ha_restart_order=3)
    assert sorted(paths_of(new, [])) == ["ha_restart_order", "ha_restart_priority"]


@pytest.mark.parametrize("path", ["uuid", "power_state", "resident_on", "nonsense"])
def test_unknown_or_read_only_paths_are_invalid(path):
    with pytest.raises(XcpError) as err:
        paths_of(dm.VM(uuid="v"), [path])
    assert (err.value.reason, err.value.params["field"]) == ("INVALID_VALUE", "update_mask")


def test_only_the_masked_fields_change():
    new = dm.VM(uuid="v", name_label="db", ha_restart_priority=dm.BEST_EFFORT, memory=5)
    out = updated(HALTED_VM, new, ["ha_restart_priority"])
    assert (out.name_label, out.ha_restart_priority, out.memory) == ("web", dm.BEST_EFFORT, 1 << 30)
    assert HALTED_VM.ha_restart_priority == dm.HA_RESTART_PRIORITY_UNSPECIFIED  # not changed


def test_memory_only_while_halted():
    running = dm.VM(uuid="v", power_state=dm.RUNNING, memory=1 << 30, vcpus=1)
    with pytest.raises(XcpError) as err:
        updated(running, dm.VM(uuid="v", memory=2 << 30), ["memory"])
    assert err.value.reason == "VM_BAD_POWER_STATE"
    assert updated(running, dm.VM(uuid="v", memory=1 << 30), ["memory"]).memory == 1 << 30
    assert updated(HALTED_VM, dm.VM(uuid="v", memory=2 << 30), ["memory"]).memory == 2 << 30


@pytest.mark.parametrize("path, value", [("ha_restart_priority", 7), ("memory", 0),
                                         ("name_label", ""), ("affinity", "not-a-uuid")])
def test_bad_values_are_invalid(path, value):
    with pytest.raises(XcpError) as err:
        updated(HALTED_VM, dm.VM(uuid="v", **{path: value}), [path])
    assert (err.value.reason, err.value.params["field"]) == ("INVALID_VALUE", path)


def test_other_config_is_replaced_whole():
    vm = dm.VM(uuid="v", other_config={"a": "1", "b": "2"})
    out = updated(vm, dm.VM(uuid="v", other_config={"c": "3"}), ["other_config"])
    assert dict(out.other_config) == {"c": "3"}
