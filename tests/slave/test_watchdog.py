"""The host watchdog on a stand-in device (a plain file records what a real
/dev/watchdog would get): armed only with HA, petted only while acknowledged,
disarmed with the magic close. No real watchdog, no reboot, no sleeping."""

from __future__ import annotations

from xcp_control.slave.watchdog import MAGIC_CLOSE, PET, HostWatchdog, WatchdogKeeper


def stand_in(tmp_path):
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    return device, HostWatchdog(str(device))


def test_not_armed_without_ha(tmp_path):
    device, dog = stand_in(tmp_path)
    keeper = WatchdogKeeper(dog, acknowledged=lambda now: True)
    assert not dog.armed and not keeper.tick(0.0)
    assert device.read_bytes() == b""


def test_armed_with_ha_petted_while_acknowledged(tmp_path):
    device, dog = stand_in(tmp_path)
    acked_until = 10.0
    keeper = WatchdogKeeper(dog, acknowledged=lambda now: now < acked_until, ha_enabled=True)
    assert dog.armed
    assert [keeper.tick(t) for t in (1.0, 2.0, 11.0, 12.0)] == [True, True, False, False]
    assert device.read_bytes() == PET * 2  # the master stopped acknowledging: no more pets
    acked_until = 20.0
    assert keeper.tick(13.0)


def test_disabling_ha_disarms_with_the_magic_close(tmp_path):
    device, dog = stand_in(tmp_path)
    keeper = WatchdogKeeper(dog, acknowledged=lambda now: True, ha_enabled=True)
    keeper.tick(0.0)
    keeper.set_ha_enabled(False)
    assert not dog.armed and not keeper.tick(1.0)
    assert device.read_bytes() == PET + MAGIC_CLOSE
    keeper.set_ha_enabled(True)  # re-armed: a new open of the device
    assert dog.armed and keeper.tick(2.0)
