"""Input checks: each failure is INVALID_VALUE naming the field. No network."""

from __future__ import annotations

import uuid as uuid_module

import pytest

from xcp_control import validation
from xcp_control.errors import XcpError
from xcp.v1 import datamodel_pb2 as dm

GOOD = "0f8fad5b-d9cb-469f-a165-70867728950e"


def invalid(fn, *args) -> XcpError:
    with pytest.raises(XcpError) as caught:
        fn(*args)
    assert caught.value.reason == "INVALID_VALUE"
    return caught.value


# -- uuids ---------------------------------------------------------------------------


def test_canonical_uuid_is_accepted():
    assert validation.uuid("uuid", GOOD) == GOOD
    fresh = str(uuid_module.uuid4())
    assert validation.uuid("uuid", fresh) == fresh


def test_upper_case_uuid_is_canonicalised():
    assert validation.uuid("uuid", GOOD.upper()) == GOOD


@pytest.mark.parametrize("bad", [
    "", " ", "x", "not-a-uuid", GOOD[:-1], GOOD + "0", GOOD + " ", " " + GOOD,
    GOOD.replace("-", ""),  # 32 hex digits: UUID() takes it, but it is not canonical
    "{" + GOOD + "}", "urn:uuid:" + GOOD, GOOD.replace("a", "g"),
    GOOD[:8] + "+" + GOOD[9:], "\x00" * 36, "é" * 36,
])
def test_malformed_uuid_is_invalid_value(bad):
    err = invalid(validation.uuid, "affinity", bad)
    assert err.params["field"] == "affinity"
    assert err.params["value"] == bad[:64]


def test_optional_uuid():
    assert validation.optional_uuid("host", "") == ""
    assert validation.optional_uuid("host", GOOD) == GOOD
    invalid(validation.optional_uuid, "host", "nope")


def test_echoed_value_is_truncated():
    err = invalid(validation.uuid, "uuid", "z" * 10_000)
    assert err.params["value"] == "z" * 64
    assert len(err.message) < 300


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("ok", ["a", "web-01", "x" * validation.MAX_NAME, "naïve 名前 🙂",
                                " padded "])
def test_good_names(ok):
    assert validation.name("name_label", ok) == ok


@pytest.mark.parametrize("bad", ["", " ", "\t", "x" * (validation.MAX_NAME + 1), "a\nb",
                                 "nul\x00", "bell\x07", "\u2028"])
def test_bad_names(bad):
    err = invalid(validation.name, "name_label", bad)
    assert err.params["field"] == "name_label"


# -- counts and enums ------------------------------------------------------------------


def test_count_bounds_are_inclusive():
    assert validation.count("vcpus", 1, 1, 4) == 1
    assert validation.count("vcpus", 4, 1, 4) == 4
    for bad in (0, -1, 5, -(1 << 63), (1 << 63) - 1):
        err = invalid(validation.count, "vcpus", bad, 1, 4)
        assert err.params == {"field": "vcpus", "value": str(bad)}


def test_memory_limit():
    assert validation.count("memory", validation.MAX_MEMORY, 1, validation.MAX_MEMORY)
    invalid(validation.count, "memory", validation.MAX_MEMORY + 1, 1, validation.MAX_MEMORY)


def test_power_state():
    for state in (dm.HALTED, dm.RUNNING, dm.PAUSED, dm.SUSPENDED):
        assert validation.power_state("power_state", state, allow_unspecified=False) == state
    assert validation.power_state("power_state", dm.POWER_STATE_UNSPECIFIED, True) == 0
    invalid(validation.power_state, "power_state", dm.POWER_STATE_UNSPECIFIED, False)
    for bad in (5, 99, -1, (1 << 31) - 1, -(1 << 31)):
        err = invalid(validation.power_state, "power_state", bad, True)
        assert err.params["value"] == str(bad)


# -- other_config ---------------------------------------------------------------------


def test_other_config_limits():
    full = {f"k{i}": "v" for i in range(validation.MAX_CONFIG_ENTRIES)}
    assert validation.other_config("other_config", full) == full
    assert validation.other_config("other_config", {}) == {}
    big = {**full, "one-more": "v"}
    err = invalid(validation.other_config, "other_config", big)
    assert err.params["field"] == "other_config"
    edge = {"k" * validation.MAX_CONFIG_KEY: "v" * validation.MAX_CONFIG_VALUE}
    assert validation.other_config("other_config", edge) == edge


@pytest.mark.parametrize("bad", [
    {"": "v"},
    {"k" * (validation.MAX_CONFIG_KEY + 1): "v"},
    {"k": "v" * (validation.MAX_CONFIG_VALUE + 1)},
])
def test_other_config_bad_entries_name_the_key(bad):
    err = invalid(validation.other_config, "other_config", bad)
    assert err.params["field"].startswith("other_config.")
    assert len(err.params["field"]) <= len("other_config.") + 64
    assert len(err.params["value"]) <= 64


def test_other_config_returns_a_plain_dict_copy():
    source = {"a": "1"}
    out = validation.other_config("other_config", source)
    assert out == source and out is not source
