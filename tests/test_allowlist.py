"""The command allow-list: `bbx slave create --commands LIST` restricts what the slave advertises
and accepts; a refused command is one clear line for the master (a bbx one or Buildbot 4.3)."""

from __future__ import annotations

import json

import pytest

from bbx.slave import commands
from bbx.slave.commands import registry
from tests.buildfarm import Farm, master_toml
from tests.realmaster import RealMaster
from tests.support import BBX, Proc, run_bbx

ALLOWED = "uploadFile,downloadFile,stat"
REFUSAL = "slave s1 does not allow command 'shell' (allowed: downloadFile, stat, uploadFile)"

BUILDERS = '''
[[builders]]
name = "files"
slaves = ["s1"]

[[builders.steps]]
download = { src = "in.txt", dest = "in.txt" }

[[builders.steps]]
upload = { src = "in.txt", dest = "out.txt" }

[[builders]]
name = "sh"
slaves = ["s1"]

[[builders.steps]]
command = ["true"]
'''


def test_the_command_names_are_those_of_the_registry():
    table = registry._classes()
    assert set(commands.NAMES) | set(commands.ALIASES) == set(table)


def test_an_allow_list_keeps_the_aliases_of_the_allowed_commands():
    allowed = commands.check_allowed(["upload_file", "stat"])
    assert allowed == ("stat", "uploadFile")
    assert set(registry.command_table(allowed)) == {"stat", "uploadFile", "upload_file"}
    assert registry.command_table(None) == registry.command_table(commands.NAMES)


def test_a_refused_command_is_a_pb_error_with_one_line():
    with pytest.raises(registry.CommandNotAllowed) as e:
        registry.lookup("shell", ("stat",), "s9")
    assert str(e.value) == "slave s9 does not allow command 'shell' (allowed: stat)"
    assert registry.lookup("stat", ("stat",), "s9").name == "stat"


def test_create_refuses_an_unknown_command_with_the_known_ones(tmp_path):
    r = run_bbx("slave", "create", tmp_path / "s", "127.0.0.1:9", "s1", "pw",
                "--commands", "uploadFile,shel")
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert "'shel'" in line and "uploadDirectory" in line
    assert not (tmp_path / "s" / "slave.toml").exists()


def test_the_allow_list_is_stored_in_slave_toml_and_can_be_edited(tmp_path):
    r = run_bbx("slave", "create", tmp_path / "s", "127.0.0.1:9", "s1", "pw", "--commands", ALLOWED)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "s" / "slave.toml").read_text()
    assert 'commands = ["downloadFile", "stat", "uploadFile"]' in text
    (tmp_path / "s" / "slave.toml").write_text(text.replace('"stat"', '"nope"'))
    r = run_bbx("slave", "status", tmp_path / "s")
    assert r.returncode == 2 and "'nope'" in r.stderr and "line" in r.stderr


@pytest.fixture
def farm(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    (farm.dir / "in.txt").write_text("hello\n")
    try:
        farm.start_master()
        made = run_bbx("slave", "create", tmp_path / "s1", f"127.0.0.1:{farm.port}", "s1", "pw-s1",
                       "--maxdelay", "1", "--commands", ALLOWED)
        assert made.returncode == 0, made.stderr
        farm.start_slave()
        yield farm
    finally:
        farm.stop()


def test_the_slave_advertises_only_the_allowed_commands(farm):
    info = json.loads(farm.bbx("info", "s1", "--json").stdout)
    table = info.get("info", info)["worker_commands"]
    assert set(table) == {"downloadFile", "download_file", "stat", "uploadFile", "upload_file"}


def test_bbx_run_on_a_slave_without_shell_gets_one_clear_line(farm):
    r = farm.bbx("run", "files", "--", "true")
    assert r.returncode == 1
    assert REFUSAL in r.stderr
    assert "Traceback" not in r.stderr


def test_allowed_transfers_run_and_a_shell_step_is_an_exception(farm):
    r = farm.bbx("build", "files")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (farm.dir / "out.txt").read_text() == "hello\n"
    r = farm.bbx("build", "sh")
    assert r.returncode == 1
    assert "EXCEPTION" in r.stdout + r.stderr and REFUSAL in r.stdout + r.stderr
    assert "refused command" in (farm.root / "s1" / "slave.log").read_text()


def test_a_buildbot_master_reports_the_refused_step_cleanly(tmp_path):
    master = RealMaster.start(tmp_path / "m", worker="w1", password="pw")
    slave = None
    try:
        made = run_bbx("slave", "create", tmp_path / "s", master.address, "w1", "pw",
                       "--commands", ALLOWED)
        assert made.returncode == 0, made.stderr
        slave = Proc([BBX, "slave", "start", tmp_path / "s"], log_path=tmp_path / "slave.out")
        slave.wait_for_output("message from master: attached", 30)
        # Buildbot 4.3 sends startCommand anyway (it only checks the version of some commands)
        # and makes our error the step's exception.
        assert master.trigger("b1") == "EXCEPTION"
        assert slave.popen.poll() is None
    finally:
        if slave is not None:
            slave.terminate()
        master.stop()
    assert "CommandNotAllowed: slave w1 does not allow command 'shell' " \
           "(allowed: downloadFile, stat, uploadFile)" in master.log()
