import pytest

from xcp_control.errors import XcpError
from xcp_control.master.locks import OperationLocks


def test_second_operation_fails_at_once_naming_the_first():
    locks = OperationLocks()
    with locks.hold("vm", "u", "start"):
        with pytest.raises(XcpError) as err:
            with locks.hold("vm", "u", "clean_shutdown"):
                pass
    assert err.value.reason == "OTHER_OPERATION_IN_PROGRESS"
    assert err.value.params == {"class": "vm", "uuid": "u", "operation": "start"}


def test_lock_is_released_even_on_error_and_is_per_object():
    locks = OperationLocks()
    with pytest.raises(RuntimeError):
        with locks.hold("vm", "u", "start"):
            with locks.hold("vm", "other", "start"), locks.hold("host", "u", "disable"):
                raise RuntimeError("boom")
    assert locks.current("vm", "u") is None
    with locks.hold("vm", "u", "pause"):
        assert locks.current("vm", "u") == "pause"
