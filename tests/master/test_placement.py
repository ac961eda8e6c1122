import pytest

from xcp_control.errors import XcpError
from xcp_control.master.placement import Candidate, check_host, choose

GB = 1 << 30


def host(uuid, live=True, enabled=True, free=8 * GB):
    return Candidate(uuid, live, enabled, free)


def reason(fn, *args):
    with pytest.raises(XcpError) as err:
        fn(*args)
    return err.value.reason, err.value.params


def test_explicit_host_checks_in_order():
    assert reason(check_host, "vm", GB, host("h", live=False, enabled=False))[0] == "HOST_OFFLINE"
    assert reason(check_host, "vm", GB, host("h", enabled=False))[0] == "HOST_DISABLED"
    assert reason(check_host, "vm", 9 * GB, host("h")) == (
        "HOST_NOT_ENOUGH_FREE_MEMORY", {"vm": "vm", "host": "h"})
    check_host("vm", 8 * GB, host("h"))  # exactly fits


def test_choose_prefers_affinity_when_it_fits():
    hosts = [host("a", free=2 * GB), host("b", free=8 * GB)]
    assert choose("vm", GB, "a", hosts) == "a"
    assert choose("vm", 4 * GB, "a", hosts) == "b"  # affinity full: elsewhere


def test_choose_spreads_to_most_free_memory_with_stable_ties():
    assert choose("vm", GB, "", [host("b", free=4 * GB), host("a", free=4 * GB)]) == "a"
    assert choose("vm", GB, "", [host("a", free=2 * GB), host("b", free=4 * GB)]) == "b"


def test_choose_skips_dead_disabled_and_full_hosts():
    hosts = [host("dead", live=False), host("off", enabled=False), host("full", free=0),
             host("ok", free=GB)]
    assert choose("vm", GB, "dead", hosts) == "ok"


def test_no_hosts_available():
    assert reason(choose, "vm", GB, "", [host("x", live=False)]) == (
        "NO_HOSTS_AVAILABLE", {"vm": "vm"})
    assert reason(choose, "vm", GB, "", [])[0] == "NO_HOSTS_AVAILABLE"
