"""Settings are refused at start-up when they would break the timing promises,
and the command line is derived from them."""

import argparse
import dataclasses

import pytest

from xcp_control import daemon, settings as settings_module
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


# -- the command line derives from the settings fields ------------------------------



@pytest.mark.parametrize("cls", [MasterSettings, SlaveSettings])
def test_every_field_has_a_doc_line_and_every_cli_field_a_flag(cls):
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser, cls)
    flags = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc line"
        if f.metadata["cli"]:
            assert f.name in flags and flags[f.name].help.startswith(f.metadata["doc"])


def test_flags_round_trip_into_settings():
    got = daemon.parse_settings("xcp-slave", "", SlaveSettings,
                                ["--memory", "2G", "--boot-time", "0", "--name", "h1",
                                 "--log-level", "DEBUG"])
    assert (got.memory, got.boot_time, got.name, got.log_level) == (2 * 1024**3, 0.0, "h1",
                                                                      "DEBUG")
    assert got.clean_shutdown_time == SlaveSettings().clean_shutdown_time
    master = daemon.parse_settings("xcp-master", "", MasterSettings, ["--db", "/x.db"])
    assert (master.db_path, master.startup_grace, master.grace) == ("/x.db", None, 3.0)


@pytest.mark.parametrize("argv, complaint", [
    (["--memory", "lots"], "not a size"),
    (["--reconnect-cap", "0"], "reconnect_cap must be > 0"),
])
def test_bad_flags_are_usage_errors(argv, complaint, capsys):
    with pytest.raises(SystemExit) as done:
        daemon.parse_settings("xcp-slave", "", SlaveSettings, argv)
    assert done.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("text, n", [("1G", 1024**3), ("512m", 512 * 1024**2),
                                     ("1.5GiB", 3 * 1024**3 // 2), ("7", 7)])
def test_one_size_parser(text, n):
    assert settings_module.parse_size(text) == n
