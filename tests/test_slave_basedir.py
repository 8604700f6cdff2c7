"""The slave directory: what `create` writes and how `load` validates slave.toml."""

from __future__ import annotations

import stat

import pytest

from bbx.slave import basedir
from bbx.slave.basedir import BasedirError


def _create(tmp_path, **kw):
    args = dict(name="w1", password="s3cret", connection="tcp:host=127.0.0.1:port=9989")
    args.update(kw)
    return basedir.create(tmp_path / "slave", **args)


def _write(tmp_path, text: str):
    d = tmp_path / "slave"
    d.mkdir(exist_ok=True)
    (d / "slave.toml").write_text(text)
    return d


GOOD = """[slave]
name = "w1"
password = "pw"
connection = "tcp:host=127.0.0.1:port=9989"
"""


def test_create_writes_a_private_config_that_loads_back(tmp_path):
    config = _create(tmp_path, keepalive=30, maxdelay=60, umask="0o022", allow_shutdown="signal")
    path = tmp_path / "slave" / "slave.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.count("#") >= 5, "the file explains its keys"
    assert 'password = "s3cret"' in text
    assert config.name == "w1" and config.password == "s3cret"
    assert config.connection == "tcp:host=127.0.0.1:port=9989"
    assert (config.keepalive, config.maxdelay, config.umask) == (30, 60.0, 0o022)
    assert config.allow_shutdown == "signal"
    assert basedir.load(tmp_path / "slave") == config


def test_create_writes_placeholder_info_files(tmp_path):
    _create(tmp_path)
    info = tmp_path / "slave" / "info"
    assert (info / "admin").read_text() == "Your Name Here <admin@youraddress.invalid>\n"
    assert (info / "host").read_text().strip() != ""


def test_create_writes_given_info_files(tmp_path):
    _create(tmp_path, info_admin="Ada <ada@example.org>", info_host="a big box")
    info = tmp_path / "slave" / "info"
    assert (info / "admin").read_text() == "Ada <ada@example.org>\n"
    assert (info / "host").read_text() == "a big box\n"


def test_create_escapes_strings_so_the_file_stays_valid_toml(tmp_path):
    config = _create(tmp_path, password='a"b\\c\u00e9')
    assert config.password == 'a"b\\c\u00e9'


def test_create_refuses_to_overwrite_without_force(tmp_path):
    _create(tmp_path)
    with pytest.raises(BasedirError, match="--force"):
        _create(tmp_path, password="other")
    assert _create(tmp_path, password="other", force=True).password == "other"


def test_load_names_the_line_of_malformed_toml(tmp_path):
    d = _write(tmp_path, GOOD + "keepalive = = 3\n")
    with pytest.raises(BasedirError) as e:
        basedir.load(d)
    assert "slave.toml" in str(e.value) and "line 5" in str(e.value)


def test_load_names_file_line_and_key_of_a_bad_value(tmp_path):
    d = _write(tmp_path, GOOD + 'keepalive = "often"\n')
    with pytest.raises(BasedirError) as e:
        basedir.load(d)
    msg = str(e.value)
    assert "slave.toml line 5" in msg and "keepalive" in msg and "'often'" in msg


def test_load_rejects_unknown_keys(tmp_path):
    d = _write(tmp_path, GOOD + "keepalvie = 3\n")
    with pytest.raises(BasedirError, match="unknown key 'keepalvie'"):
        basedir.load(d)


def test_load_requires_name_password_and_connection(tmp_path):
    d = _write(tmp_path, '[slave]\nname = "w1"\npassword = "pw"\n')
    with pytest.raises(BasedirError, match="connection"):
        basedir.load(d)


@pytest.mark.parametrize("key,value", [("allow_shutdown", '"sometimes"'), ("umask", '"0o999"'),
                                       ("maxdelay", "-1"), ("name", '""'), ("maxdelay", "inf"),
                                       ("keepalive_timeout", "nan"),
                                       ("keepalive_timeout", "10")])  # below keepalive
def test_load_rejects_bad_values(tmp_path, key, value):
    d = _write(tmp_path, GOOD.replace(f"{key} =", f"old_{key} =") + f"{key} = {value}\n")
    text = (d / "slave.toml").read_text().replace(f"old_{key} =", "# ")
    (d / "slave.toml").write_text(text)
    with pytest.raises(BasedirError, match=key):
        basedir.load(d)


def test_load_explains_a_directory_that_is_not_a_slave(tmp_path):
    with pytest.raises(BasedirError, match="bbx slave create"):
        basedir.load(tmp_path)
    with pytest.raises(BasedirError, match="does not exist"):
        basedir.load(tmp_path / "nope")


def test_keepalive_deadline_is_derived_from_the_keepalive_interval(tmp_path):
    assert _create(tmp_path, keepalive=600).keepalive_deadline == 1230
    assert _create(tmp_path, keepalive=30, keepalive_timeout=45, force=True).keepalive_deadline == 45
    assert _create(tmp_path, keepalive=0, force=True).keepalive_deadline is None


@pytest.mark.parametrize("text,value", [("", None), ("0o022", 0o022), ("022", 0o022), ("0", 0),
                                        ("18", 18)])
def test_umask_accepts_octal_and_decimal(text, value):
    assert basedir.parse_umask(text) == value


# -- what the Bot tells the master about this directory, and the builders it keeps ------------

class _Reactor:
    """Enough of a reactor for the Bot's synchronous methods."""

    def __init__(self):
        self.calls = []

    def callLater(self, delay, fn, *a, **kw):
        self.calls.append((delay, fn))


def _bot(tmp_path, os_release=None):
    from bbx.slave.bot import Bot

    config = _create(tmp_path, info_admin="Ada <ada@x.org>", info_host="box")
    (tmp_path / "slave" / "info" / "access_uri").write_text("ssh://box")
    kw = {"os_release": str(os_release)} if os_release else {}
    return Bot(config.basedir, _Reactor(), **kw), config


def test_worker_info_holds_every_info_file_and_the_slave_facts(tmp_path):
    import os

    import bbx
    from bbx.slave.commands import registry

    rel = tmp_path / "os-release"
    rel.write_text('# comment\nID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\nEMPTY=\n')
    bot, config = _bot(tmp_path, rel)
    info = bot.remote_getWorkerInfo()
    assert info["admin"] == "Ada <ada@x.org>\n" and info["host"] == "box\n"
    assert info["access_uri"] == "ssh://box"
    assert (info["os_id"], info["os_version_id"]) == ("debian", "12")
    assert info["os_pretty_name"] == "Debian GNU/Linux 12" and "os_empty" not in info
    assert info["environ"] == dict(os.environ) and info["system"] == os.name
    assert info["basedir"] == config.basedir and info["numcpus"] >= 1
    assert info["version"] == bbx.__version__ == bot.remote_getVersion()
    assert info["worker_commands"] == registry.command_table() == bot.remote_getCommands()
    assert info["delete_leftover_dirs"] is False


def test_slave_info_is_the_same_under_the_old_name(tmp_path):
    bot, _ = _bot(tmp_path)
    old, new = bot.remote_getSlaveInfo(), bot.remote_getWorkerInfo()
    assert old.pop("slave_commands") == new.pop("worker_commands")
    assert old == new


def test_set_builder_list_creates_reuses_and_removes_builders(tmp_path):
    bot, config = _bot(tmp_path)
    first = bot.remote_setBuilderList([("a", "a"), ["b", "b-dir"]])
    assert sorted(first) == ["a", "b"]
    assert (tmp_path / "slave" / "a").is_dir() and (tmp_path / "slave" / "b-dir").is_dir()
    second = bot.remote_setBuilderList([("a", "a-moved")])
    assert list(second) == ["a"] and second["a"] is first["a"], "a builder is reused, not recreated"
    assert (tmp_path / "slave" / "a-moved").is_dir()
    assert first["a"].builder_dir == str(tmp_path / "slave" / "a-moved")


def test_shutdown_stops_the_slave_a_moment_later(tmp_path):
    bot, _ = _bot(tmp_path)
    assert bot.remote_shutdown() is None
    assert [d for d, _ in bot.reactor.calls] == [0.2]


def test_start_command_refuses_an_unknown_command_at_once(tmp_path):
    from bbx.slave.commands.base import UnknownCommand

    bot, _ = _bot(tmp_path)
    builder = bot.remote_setBuilderList([("a", "a")])["a"]
    with pytest.raises(UnknownCommand):
        builder.remote_startCommand(object(), "0", "no-such-command", {})
    assert builder.command is None


def test_start_command_accepts_python2_bytes_from_old_masters(tmp_path):
    from bbx.slave.commands.base import UnknownCommand

    bot, _ = _bot(tmp_path)
    builder = bot.remote_setBuilderList([(b"a", b"a")])["a"]
    with pytest.raises(UnknownCommand, match="'no-such'"):
        builder.remote_startCommand(object(), b"0", b"no-such", {b"workdir": b"w"})
