"""bbx slave pause / drain / resume from the operator's seat (docs/protocol.md §4.7), on a real
master with real slave processes: a running build goes on, new ones wait; a drained slave's
process exits after its build and comes back paused; a pause survives a master restart."""

from __future__ import annotations

import json

from rich.console import Console

from bbx.cli.render import slaves_table
from bbx.cli.text import slave_state, slaves_lines
from tests.buildfarm import Farm, master_toml, stored_log
from tests.support import wait_until

BUILDERS = '''
[[builders]]
name = "slow"
slaves = ["s1"]
[[builders.steps]]
name = "wait"
command = "echo started; while [ ! -e ../release ]; do sleep 0.05; done; echo released"
'''


def _slave(farm: Farm, name: str = "s1") -> dict:
    listed = farm.bbx("slaves", "--json")
    assert listed.returncode == 0, listed.stderr
    return {s["name"]: s for s in json.loads(listed.stdout)}[name]


def _running_build(farm: Farm, tmp_path):
    assert farm.bbx("build", "slow", "--no-wait").returncode == 0
    build = farm.wait_build(lambda b: b["state"] == "running", what="the build to start")
    wait_until(lambda: "started" in stored_log(farm.db, build["id"]), 20, what="the step")
    return build


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


def test_pause_lets_the_running_build_finish_and_holds_new_ones_until_resume(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        farm.start_master()
        farm.start_slave("s1")
        assert _slave(farm)["state"] == "idle"
        build = _running_build(farm, tmp_path)
        assert _slave(farm)["state"] == "building"

        paused = _ok(farm.bbx("slave", "pause", "s1"))
        assert paused.stdout.startswith("slave s1 paused")
        assert f"running: build {build['id']}" in paused.stdout
        row = _slave(farm)
        assert (row["state"], row["running_builds"], row["connected"]) == \
            ("paused", [build["id"]], True)
        assert "paused (build" in farm.bbx("slaves").stdout
        _ok(farm.bbx("build", "slow", "--no-wait"))  # queued: s1 is paused
        builders = json.loads(farm.bbx("builders", "--json").stdout)
        assert builders[0]["attached"] == ["s1"] and builders[0]["usable"] == []

        (tmp_path / "s1" / "slow" / "release").touch()
        done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"], 30,
                               what="the running build to end")
        assert done["result_name"] == "success"  # the pause did not touch it
        wait_until(lambda: _slave(farm)["running_builds"] == [], 20, what="s1 idle")
        assert len(farm.queued()) == 1
        assert [b["id"] for b in farm.builds()] == [build["id"]]

        resumed = _ok(farm.bbx("slave", "resume", "s1"))
        assert resumed.stdout.startswith("slave s1 resumed")
        second = farm.wait_build(lambda b: b["id"] != build["id"] and b["finished_at"], 30,
                                 what="the held build to run after resume")
        assert second["result_name"] == "success" and second["slave"] == "s1"
        assert _slave(farm)["state"] == "idle"
    finally:
        farm.stop()


def test_drain_shuts_the_slave_down_after_its_build_and_it_returns_paused(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        farm.start_master()
        slave = farm.start_slave("s1")
        build = _running_build(farm, tmp_path)

        drained = _ok(farm.bbx("slave", "drain", "s1", "--json"))
        assert json.loads(drained.stdout)["state"] == "draining"
        assert _slave(farm)["state"] == "draining"
        assert slave.popen.poll() is None  # busy: not shut down yet
        _ok(farm.bbx("build", "slow", "--no-wait"))

        (tmp_path / "s1" / "slow" / "release").touch()
        done = farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"], 30,
                               what="the build to end")
        assert done["result_name"] == "success"
        assert slave.popen.wait(30) == 0  # the real slave process exits, gracefully
        wait_until(lambda: not _slave(farm)["connected"], 20, what="s1 to detach")
        assert _slave(farm)["state"] == "paused"

        (tmp_path / "s1" / "slow" / "release").unlink()
        farm.start_slave("s1")  # back, but paused: the queued build waits
        row = _slave(farm)
        assert (row["connected"], row["state"]) == (True, "paused")
        assert len(farm.queued()) == 1

        _ok(farm.bbx("slave", "resume", "s1"))
        second = farm.wait_build(lambda b: b["id"] != build["id"] and b["state"] == "running",
                                 30, what="the queued build to start after resume")
        assert second["slave"] == "s1"
    finally:
        farm.stop()


def test_resume_calls_off_a_drain_not_yet_carried_out(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        farm.start_master()
        slave = farm.start_slave("s1")
        build = _running_build(farm, tmp_path)
        _ok(farm.bbx("slave", "drain", "s1"))
        _ok(farm.bbx("slave", "resume", "s1"))
        (tmp_path / "s1" / "slow" / "release").touch()
        farm.wait_build(lambda b: b["id"] == build["id"] and b["finished_at"], 30,
                        what="the build to end")
        _ok(farm.bbx("run", "slow", "--", "echo", "still-here"))  # attached and taking work
        assert slave.popen.poll() is None
        assert _slave(farm)["state"] == "idle"
    finally:
        farm.stop()


def test_a_pause_survives_a_master_restart(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        farm.start_master()
        farm.start_slave("s1")
        _ok(farm.bbx("slave", "pause", "s1"))
        farm.slaves["s1"].terminate()
        farm.master.terminate()

        farm.start_master()
        assert _slave(farm)["state"] == "paused"  # read back from the store, not attached yet
        farm.start_slave("s1")
        assert _slave(farm)["state"] == "paused"
        (tmp_path / "s1" / "slow").mkdir(parents=True, exist_ok=True)
        (tmp_path / "s1" / "slow" / "release").touch()
        _ok(farm.bbx("build", "slow", "--no-wait"))
        wait_until(lambda: farm.queued(), 10, what="the request to be queued")
        assert farm.builds() == []

        _ok(farm.bbx("slave", "resume", "s1"))
        done = farm.wait_build(lambda b: b["finished_at"], 30, what="the build after resume")
        assert done["result_name"] == "success"
    finally:
        farm.stop()


def test_an_unknown_slave_is_one_line_and_exit_5(tmp_path):
    farm = Farm(tmp_path, master_toml(BUILDERS))
    try:
        farm.start_master()
        for action in ("pause", "drain", "resume"):
            result = farm.bbx("slave", action, "nobody")
            assert result.returncode == 5, result
            assert result.stderr.splitlines() == [
                "bbx: no slave named 'nobody' (configured: s1)"]
        # A drain of a slave that is not attached only pauses it.
        drained = _ok(farm.bbx("slave", "drain", "s1"))
        assert "not attached: paused" in drained.stdout
        assert _slave(farm)["state"] == "paused"
    finally:
        farm.stop()


SLAVES = [
    {"name": "a", "connected": True, "state": "idle", "running_builds": []},
    {"name": "b", "connected": True, "state": "building", "running_builds": [7]},
    {"name": "c", "connected": True, "state": "paused", "running_builds": [8]},
    {"name": "d", "connected": True, "state": "draining", "running_builds": []},
    {"name": "e", "connected": False, "state": "disconnected", "running_builds": []},
]


def test_the_state_column_renders_each_state():
    assert [slave_state(s) for s in SLAVES] == [
        "idle", "building (build 7)", "paused (build 8 running)", "draining", "disconnected"]
    assert slave_state({"name": "old master"}) == "-"
    assert slave_state({"state": "disconnected", "master": "b"}) == "elsewhere"
    console = Console(record=True, width=160, color_system=None)
    console.print(slaves_table(SLAVES, now=0))
    text = console.export_text()
    for word in ("state", "building (build 7)", "paused (build 8 running)", "draining"):
        assert word in text
    lines = slaves_lines(SLAVES, now=0)
    assert lines[0].split()[:3] == ["name", "connected", "state"]
    assert lines[3].split()[:3] == ["c", "yes", "paused"]
