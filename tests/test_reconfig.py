"""`bbx master reconfig DIR` and SIGHUP: a running bbx master re-reads master.toml and applies it
without dropping its slaves (bbx/master/reconfig.py), against real peers: bbx slaves, a real
buildbot-worker 4.3 and a real buildslave 0.8.14.

Every wait is on an event: a line in a log, a file a step writes, the CLI's exit.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.buildfarm import Farm, master_toml
from tests.peers08 import BuildSlave08, slave08_install  # noqa: F401 (fixture)
from tests.realworker import Worker
from tests.support import wait_until

PEERS = ["bbx-slave", "buildbot-worker-4.3", "buildslave-0.8.14"]
ATTACHED = "slave s1 attached from"


def builder(name: str, slaves=("s1",), command: str = "echo hello") -> str:
    names = ", ".join(f'"{s}"' for s in slaves)
    return (f'[[builders]]\nname = "{name}"\nslaves = [{names}]\n\n'
            f'[[builders.steps]]\nname = "step"\ncommand = {json.dumps(command)}\n\n')


def held_step(root: Path) -> str:
    """A step that says it started (a file) and ends only once the test creates `go`."""
    return (f"touch {root}/started; while [ ! -e {root}/go ]; do sleep 0.1; done; "
            "echo step-done")


def rewrite(farm: Farm, toml: str) -> None:
    path = farm.dir / "master.toml"
    path.write_text(toml)
    os.chmod(path, 0o600)


def reconfig(farm: Farm, expect_ok: bool = True):
    result = farm.bbx("master", "reconfig", farm.dir)
    if expect_ok:
        assert result.returncode == 0, result.stderr
    return result


def master_log(farm: Farm) -> str:
    return farm.master.output()


class Peer:
    """One real slave named s1 of a given kind, attached to the farm's master."""

    def __init__(self, kind: str, farm: Farm, install=None):
        self.kind = kind
        self.farm = farm
        self.basedir = farm.root / "s1"
        if kind == "bbx-slave":
            self.proc = farm.start_slave("s1")
            self._log = self.proc.output
            self.stop = self.proc.terminate
        elif kind == "buildbot-worker-4.3":
            worker = Worker(self.basedir, farm.port, "s1", "pw-s1")
            self.proc = worker.start_foreground()
            self._log = lambda: worker.log() + self.proc.output()
            self.stop = self.proc.terminate
        else:
            slave = BuildSlave08(install, self.basedir, f"127.0.0.1:{farm.port}", "s1",
                                 "pw-s1").start()
            self._log = slave.log
            self.stop = slave.stop
        wait_until(lambda: ATTACHED in master_log(farm), 60, what="s1 to attach")

    def log(self) -> str:
        return self._log()

    def removed(self, name: str) -> str:
        """The line the slave logs once builder `name` has left its list."""
        if self.kind == "bbx-slave":
            return f"builder {name} removed by the master"
        return f"I have a leftover directory '{name}' that is not being used"


@pytest.fixture
def peer_install(request):
    """The 0.8 install only for the 0.8 peer, so the others run where Python 2.7 does not."""
    if request.node.callspec.params["kind"] == "buildslave-0.8.14":
        return request.getfixturevalue("slave08_install")
    return None


@pytest.fixture
def farm(tmp_path):
    farms = []

    def make(toml: str) -> Farm:
        f = Farm(tmp_path, toml)
        farms.append(f)
        f.start_master()
        return f

    yield make
    for f in farms:
        f.stop()


# -- builders added and removed on each real peer, a busy one held until its build ends --------

@pytest.mark.parametrize("kind", PEERS)
def test_builders_are_added_and_removed_live_and_a_running_build_survives(kind, farm, tmp_path,
                                                                          peer_install):
    f = farm(master_toml(builder("keep", command=held_step(tmp_path))))
    peer = Peer(kind, f, peer_install)
    try:
        rewrite(f, master_toml(builder("keep", command=held_step(tmp_path)) + builder("extra")))
        added = reconfig(f)
        assert "builders added: extra" in added.stdout and "sent s1 its builder list" in added.stdout
        ping = f.bbx("ping", "extra")
        assert ping.returncode == 0, ping.stderr

        build = f.cli("build", "keep", name="build")
        wait_until(lambda: (tmp_path / "started").exists(), 60, what="the build's step to start")

        rewrite(f, master_toml(builder("extra")))
        removed = reconfig(f)
        assert "builders removed: keep" in removed.stdout
        assert "keep stays on s1 until build" in removed.stdout, removed.stdout
        assert f.bbx("ping", "keep").returncode != 0  # no new work for a removed builder
        assert peer.removed("keep") not in peer.log()

        (tmp_path / "go").touch()
        assert build.popen.wait(60) == 0, build.output()
        assert "step-done" in build.output()
        done = f.wait_build(lambda b: b["builder"] == "keep" and b["finished_at"], 30)
        assert done["result_name"] == "success"
        wait_until(lambda: "slave s1: builders now extra" in master_log(f), 30,
                   what="the held builder to leave s1's list")
        wait_until(lambda: peer.removed("keep") in peer.log(), 30,
                   what="the slave to drop builder keep")
        assert f.bbx("ping", "extra").returncode == 0
        assert master_log(f).count(ATTACHED) == 1  # never dropped
    finally:
        (tmp_path / "go").touch()
        peer.stop()


# -- a removed slave -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", PEERS)
def test_a_removed_attached_slave_is_disconnected_with_a_reason_in_both_logs(kind, farm,
                                                                              peer_install):
    slaves = (("s0", 1), ("s1", 1))
    f = farm(master_toml(builder("b0", ("s0",)) + builder("b1", ("s1",)), slaves=slaves))
    peer = Peer(kind, f, peer_install)
    try:
        rewrite(f, master_toml(builder("b0", ("s0",)), slaves=(("s0", 1),)))
        result = reconfig(f)
        assert "slaves removed: s1" in result.stdout
        wait_until(lambda: "slave s1 detached (removed from master.toml)" in master_log(f), 30,
                   what="the master to disconnect s1")
        assert "slave s1 was removed from master.toml; disconnecting it" in master_log(f)
        wait_until(lambda: "this slave (s1) was removed from the master's master.toml" in peer.log(),
                   30, what="the reason in the slave's log")
        wait_until(lambda: "refused login as 's1'" in master_log(f), 60,
                   what="the slave's next login to be refused")
        listed = json.loads(f.bbx("slaves", "--json").stdout)
        assert [s["name"] for s in listed] == ["s0"]
    finally:
        peer.stop()


def test_a_removed_slave_finishes_its_running_build_before_it_is_disconnected(farm, tmp_path):
    slaves = (("s0", 1), ("s1", 1))
    f = farm(master_toml(builder("b0", ("s0",)) + builder("b1", ("s1",), held_step(tmp_path)),
                         slaves=slaves))
    slave = f.start_slave("s1")
    try:
        build = f.cli("build", "b1", name="build")
        wait_until(lambda: (tmp_path / "started").exists(), 60, what="the build to start")
        rewrite(f, master_toml(builder("b0", ("s0",)), slaves=(("s0", 1),)))
        reconfig(f)
        assert "slave s1 was removed from master.toml; it is disconnected when its 1 running " \
               "build(s) end" in master_log(f)
        assert "detached" not in master_log(f)
        (tmp_path / "go").touch()
        assert build.popen.wait(60) == 0, build.output()
        wait_until(lambda: "slave s1 detached (removed from master.toml)" in master_log(f), 30,
                   what="s1 to be disconnected after its build")
        done = f.wait_build(lambda b: b["builder"] == "b1" and b["finished_at"], 30)
        assert done["result_name"] == "success"
        slave.wait_for_output("unauthorized", 60)
    finally:
        (tmp_path / "go").touch()


# -- what the file says ----------------------------------------------------------------------

def test_a_bad_file_changes_nothing_and_the_cli_exits_non_zero_with_the_reason(farm):
    f = farm(master_toml(builder("b1")))
    f.start_slave("s1")
    rewrite(f, master_toml(builder("b1") + builder("b2", ("nobody",))))
    result = reconfig(f, expect_ok=False)
    assert result.returncode == 2
    assert "master.toml:" in result.stderr and "slave 'nobody' is not configured" in result.stderr
    assert "nothing changed" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    wait_until(lambda: "reconfiguration failed:" in master_log(f), 10, what="the master's line")
    names = [b["name"] for b in json.loads(f.bbx("builders", "--json").stdout)]
    assert names == ["b1"]
    assert f.bbx("ping", "b1").returncode == 0
    assert "s1" in f.attached()


def test_changed_steps_apply_to_the_next_build(farm):
    f = farm(master_toml(builder("b1", command="echo old-step")))
    f.start_slave("s1")
    rewrite(f, master_toml(builder("b1", command="echo new-step")))
    assert "builders changed: b1" in reconfig(f).stdout
    built = f.bbx("build", "b1")
    assert built.returncode == 0, built.stderr
    assert "new-step" in built.stdout and "old-step" not in built.stdout


def test_settings_bound_at_start_need_a_restart_and_the_rest_applies(farm):
    f = farm(master_toml(builder("b1")))
    f.start_slave("s1")
    endpoint = (f.dir / "master.endpoint").read_text()
    toml = master_toml(builder("b1") + builder("b2"), master_extra="retry_lost = 3")
    rewrite(f, toml.replace('listen = "tcp:0:interface=127.0.0.1"',
                            'listen = "tcp:0:interface=127.0.0.2"'))
    result = reconfig(f)
    assert "needs a restart: master.listen" in result.stdout
    assert "builders added: b2" in result.stdout and "settings changed: master.retry_lost" in result.stdout
    assert (f.dir / "master.endpoint").read_text() == endpoint
    assert f.bbx("ping", "b2").returncode == 0


def test_a_changed_password_applies_to_the_next_login_and_the_slave_stays(farm):
    f = farm(master_toml(builder("b1")))
    slave = f.start_slave("s1")
    rewrite(f, master_toml(builder("b1")).replace('password = "pw-s1"', 'password = "new-pw"'))
    assert "slaves changed: s1" in reconfig(f).stdout
    assert f.bbx("ping", "b1").returncode == 0 and "s1" in f.attached()
    f.kill_slave("s1")
    f.start_slave("s1", attached=False)
    f.slaves["s1"].wait_for_output("unauthorized", 60)
    assert "wrong password" in master_log(f)
    del slave


def test_sighup_reconfigures_as_the_cli_does(farm):
    f = farm(master_toml(builder("b1")))
    f.start_slave("s1")
    rewrite(f, master_toml(builder("b1") + builder("b2")))
    os.kill(f.master.pid, signal.SIGHUP)
    f.master.wait_for_output("reconfiguration finished: builders added: b2", 30)
    assert f.bbx("ping", "b2").returncode == 0
    f.slaves["s1"].wait_for_output("builder b2 added", 10)


def test_reconfig_without_a_running_master_says_so(tmp_path):
    from tests.support import run_bbx

    (tmp_path / "m").mkdir()
    result = run_bbx("master", "reconfig", tmp_path / "m")
    assert result.returncode == 1
    assert "no master is running in" in result.stderr


def test_a_running_bbx_run_command_survives_the_removal_of_its_builder(farm, tmp_path):
    f = farm(master_toml(builder("b1") + builder("b2")))
    slave = f.start_slave("s1")
    run = f.cli("run", "b1", "--shell", "--", held_step(tmp_path), name="run")
    wait_until(lambda: (tmp_path / "started").exists(), 60, what="the command to start")
    rewrite(f, master_toml(builder("b2")))
    assert "b1 stays on s1 until" in reconfig(f).stdout
    (tmp_path / "go").touch()
    assert run.popen.wait(60) == 0, run.output()
    assert "step-done" in run.output()
    slave.wait_for_output("builder b1 removed by the master", 30)
    assert f.bbx("ping", "b2").returncode == 0


# -- the plan, a pure function of two configs ------------------------------------------------

def test_the_plan_names_every_change_and_keeps_restart_settings_as_running(tmp_path):
    from bbx.master.config import parse_config
    from bbx.master.reconfig import plan

    path = tmp_path / "master.toml"
    old = parse_config(master_toml(builder("a") + builder("b"), slaves=(("s1", 1), ("s2", 1))),
                       path)
    new_text = master_toml(builder("b", command="make") + builder("c", ("s3",)),
                           slaves=(("s1", 2), ("s3", 1)), master_extra='db = "other.sqlite"')
    change = plan(old, parse_config(new_text, path))
    assert change.slaves_added == ("s3",) and change.slaves_removed == ("s2",)
    assert change.slaves_changed == ("s1",)
    assert change.builders_added == ("c",) and change.builders_removed == ("a",)
    assert change.builders_changed == ("b",)
    assert change.needs_restart == ("master.db",) and change.config.db == old.db
    assert not change.control_changed
    assert plan(old, old).empty
