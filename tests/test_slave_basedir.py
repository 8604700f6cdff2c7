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
                                       ("maxdelay", "-1"), ("name", '""')])
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
    assert _create(tmp_path, keepalive=600, keepalive_timeout=45, force=True).keepalive_deadline == 45
    assert _create(tmp_path, keepalive=0, force=True).keepalive_deadline is None


@pytest.mark.parametrize("text,value", [("", None), ("0o022", 0o022), ("022", 0o022), ("0", 0),
                                        ("18", 18)])
def test_umask_accepts_octal_and_decimal(text, value):
    assert basedir.parse_umask(text) == value
