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


# -- storms: the listen backlog and the attach queue -------------------------------------------

def test_listen_backlog_and_max_attaching_default_and_load(tmp_path):
    from bbx.master.config import DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_ATTACHING

    config = load_config(write(tmp_path, GOOD))
    assert (config.listen_backlog, config.max_attaching) == (DEFAULT_LISTEN_BACKLOG,
                                                             DEFAULT_MAX_ATTACHING)
    text = GOOD.replace("keepalive_interval = 5", "keepalive_interval = 5\nlisten_backlog = 512\n"
                        "max_attaching = 8")
    config = load_config(write(tmp_path, text))
    assert (config.listen_backlog, config.max_attaching) == (512, 8)


@pytest.mark.parametrize("key", ["listen_backlog", "max_attaching"])
def test_a_backlog_or_attach_limit_below_one_names_its_line(tmp_path, key):
    message = error_of(tmp_path, GOOD.replace("keepalive_interval = 5",
                                              f"keepalive_interval = 5\n{key} = 0"))
    assert ":4:" in message and f"master.{key}" in message and ">= 1" in message


def test_the_commented_config_documents_the_storm_settings(tmp_path):
    path = write_config(tmp_path, "tcp:0", [SlaveConfig("s1", "p")], [])
    text = path.read_text()
    assert "# listen_backlog = 4096" in text and "somaxconn" in text
    assert "# max_attaching = 100" in text


def test_the_listen_string_gets_the_backlog_unless_it_names_one():
    from bbx.pb.endpoints import with_backlog

    assert with_backlog("tcp:9989:interface=127.0.0.1", 4096) == \
        "tcp:9989:interface=127.0.0.1:backlog=4096"
    assert with_backlog("unix:/run/bbx.sock", 64) == "unix:/run/bbx.sock:backlog=64"
    assert with_backlog(r"tcp6:9989:interface=\:\:1", 8) == r"tcp6:9989:interface=\:\:1:backlog=8"
    assert with_backlog("tcp:9989:backlog=10", 4096) == "tcp:9989:backlog=10"
    assert with_backlog("systemd:domain=INET:index=0", 4096) == "systemd:domain=INET:index=0"
    assert with_backlog(r"ssl:9989:privateKey=a\:backlog=1.pem", 7).endswith(":backlog=7")


def test_a_master_with_10000_slaves_loads_its_config(tmp_path):
    # The number is not timed here (bench/swarm.py prints it); a quadratic scan would show as
    # a run of minutes.
    slaves = [SlaveConfig(f"s{i}", f"p{i}") for i in range(10_000)]
    builders = [BuilderConfig(f"b{k}", tuple(f"s{i}" for i in range(k, 10_000, 10)), f"b{k}")
                for k in range(10)]
    path = write_config(tmp_path, "tcp:0", slaves, builders, force=True)
    config = load_config(path.parent)
    assert len(config.slaves) == 10_000 and len(config.builders) == 10


def test_the_open_file_limit_is_raised_towards_the_hard_limit_only_as_needed():
    from bbx.master import fdlimit

    class Resource:
        RLIMIT_NOFILE = 7
        RLIM_INFINITY = -1

        def __init__(self, soft, hard):
            self.limits = (soft, hard)

        def getrlimit(self, which):
            return self.limits

        def setrlimit(self, which, limits):
            self.limits = limits

    res = Resource(1024, 20000)
    budget = fdlimit.raise_nofile(10_512, res)
    assert res.limits == (10_512, 20000) and budget.raised_from == 1024 and budget.enough
    res = Resource(1024, 4096)
    budget = fdlimit.raise_nofile(10_512, res)
    assert res.limits == (4096, 4096) and not budget.enough
    assert "open-file limit is 4096" in budget.problem() and "LimitNOFILE" in budget.problem()
    res = Resource(50_000, 50_000)
    budget = fdlimit.raise_nofile(10_512, res)
    assert res.limits == (50_000, 50_000) and budget.raised_from is None and budget.enough
