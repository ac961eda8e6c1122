"""Settings are refused at start-up when they would break the timing promises."""

import pytest

from xcp_control.settings import MasterSettings, SettingsError, SlaveSettings


def test_defaults_are_valid():
    assert MasterSettings().validate() and SlaveSettings().validate()


@pytest.mark.parametrize("changes, complaint", [
    (dict(dead_after=1.0, heartbeat_interval=1.0), "larger than heartbeat_interval"),
    (dict(dead_after=0.5), "larger than heartbeat_interval"),
    (dict(contact_timeout=0), "contact_timeout must be > 0"),
    (dict(startup_grace=-1.0), "startup_grace"),
    (dict(listen="7000"), "--listen must be HOST:PORT"),
    (dict(token_listen="127.0.0.1:7001"), "--token-listen needs --tls-dir"),
    (dict(token_listen="nowhere", tls_dir="/tls"), "--token-listen must be HOST:PORT"),
])
def test_master_refuses(changes, complaint):
    with pytest.raises(SettingsError, match=complaint):
        MasterSettings(**changes).validate()


def test_token_endpoint_with_tls_is_accepted():
    settings = MasterSettings(tls_dir="/tls", token_listen="127.0.0.1:0").validate()
    assert settings.token_listen == "127.0.0.1:0"


@pytest.mark.parametrize("changes", [dict(memory=0), dict(reconnect_cap=0),
                                     dict(boot_time=-1), dict(master="nowhere")])
def test_slave_refuses(changes):
    with pytest.raises(SettingsError):
        SlaveSettings(**changes).validate()
