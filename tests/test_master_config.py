"""master.toml validation: every error names the file, the line, the key and a fix."""

from __future__ import annotations

import os
import stat

import pytest

from bbx.master.config import (BuilderConfig, ConfigError, ControlUser, SlaveConfig, load_config,
                               write_config)

GOOD = """\
[master]
listen = "tcp:0:interface=127.0.0.1"
keepalive_interval = 5
keepalive_timeout = 20

[[slaves]]
name = "s1"
password = "p1"

[[slaves]]
name = "s2"
password = "p2"

[[builders]]
name = "linux build"
slaves = ["s1", "s2"]

[control]
users = [{ name = "admin", password = "secret" }]
"""


def write(tmp_path, text):
    (tmp_path / "master.toml").write_text(text)
    return tmp_path


def error_of(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_a_good_config_loads_into_frozen_dataclasses(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert [s.name for s in config.slaves] == ["s1", "s2"]
    assert config.builder("linux build").slaves == ("s1", "s2")
    assert config.keepalive_interval == 5 and config.keepalive_timeout == 20
    assert config.control_user("admin").password == "secret"
    with pytest.raises(Exception):
        config.listen = "x"  # frozen


def test_builddir_defaults_to_the_builder_name_with_unsafe_characters_replaced(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.builder("linux build").builddir == "linux_build"


def test_toml_syntax_error_names_file_and_line(tmp_path):
    message = error_of(tmp_path, GOOD.replace('name = "s2"', 'name = "s2'))
    assert f"{tmp_path / 'master.toml'}:11" in message
    assert "syntax" in message


def test_builder_naming_an_unconfigured_slave_names_line_key_and_choices(tmp_path):
    message = error_of(tmp_path, GOOD.replace('["s1", "s2"]', '["s1", "s9"]'))
    assert f"{tmp_path / 'master.toml'}:16" in message
    assert "builders[0].slaves" in message and "'s9'" in message and "s1, s2" in message


def test_duplicate_slave_name_is_an_error(tmp_path):
    message = error_of(tmp_path, GOOD.replace('name = "s2"', 'name = "s1"'))
    assert ":11:" in message and "slaves[1].name" in message and "twice" in message


def test_empty_password_is_an_error(tmp_path):
    message = error_of(tmp_path, GOOD.replace('password = "p2"', 'password = ""'))
    assert ":12:" in message and "slaves[1].password" in message and "empty" in message


def test_slave_named_like_a_control_user_is_an_error(tmp_path):
    message = error_of(tmp_path, GOOD.replace('name = "admin"', 'name = "s1"'))
    assert ":19:" in message and "control.users" in message and "same name as a slave" in message


def test_keepalive_numbers_must_be_positive(tmp_path):
    message = error_of(tmp_path, GOOD.replace("keepalive_interval = 5", "keepalive_interval = -1"))
    assert ":3:" in message and "keepalive_interval" in message and "positive" in message


def test_keepalive_timeout_must_exceed_the_interval(tmp_path):
    message = error_of(tmp_path, GOOD.replace("keepalive_timeout = 20", "keepalive_timeout = 5"))
    assert ":4:" in message and "keepalive_timeout" in message


def test_unknown_builder_key_is_rejected_but_steps_are_accepted(tmp_path):
    accepted = GOOD.replace('slaves = ["s1", "s2"]', 'slaves = ["s1", "s2"]\nsteps = []')
    assert load_config(write(tmp_path, accepted)).builder("linux build")
    moved = error_of(tmp_path, GOOD.replace('slaves = ["s1", "s2"]', 'slaves = ["s1", "s2"]\nmax_builds = 1'))
    assert "max_builds" in moved and "[[slaves]]" in moved
    message = error_of(tmp_path, GOOD.replace('slaves = ["s1", "s2"]', 'slaves = ["s1", "s2"]\ncolour = 1'))
    assert ":17:" in message and "colour" in message and "not a known key" in message


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "not found" in str(info.value) and "bbx master create" in str(info.value)


def test_write_config_creates_a_private_commented_file_that_loads(tmp_path):
    path = write_config(tmp_path / "m", "tcp:0", [SlaveConfig("a", "pa")],
                        [BuilderConfig("b", ("a",), "b")], [ControlUser("admin", "x")])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().count("#") > 5
    config = load_config(tmp_path / "m")
    assert config.slave("a").password == "pa" and config.builder("b").slaves == ("a",)


def test_write_config_refuses_to_overwrite_without_force(tmp_path):
    args = (tmp_path, "tcp:0", [SlaveConfig("a", "pa")], [BuilderConfig("b", ("a",), "b")])
    write_config(*args)
    with pytest.raises(FileExistsError):
        write_config(*args)
    write_config(*args, force=True)
