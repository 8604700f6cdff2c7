"""Every way the slave starts a command (bbx/slave/spawn.py) gives it the same world: clone3 born
in its cgroup, posix_spawn through dash and setpriv, and the plain fork of the slave
(BBX_SPAWN=fork). Real commands through the command driver (tests/drive_command.py), which picks
the spawner as a slave does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bbx.slave import cgroup as cg
from bbx.slave.spawn import SPAWN_ENV, choose_spawner
from tests.support import alive, wait_until

DRIVER = Path(__file__).with_name("drive_command.py")
PY = sys.executable

# What the command sees of its world, as one JSON line.
PROBE = r"""
import json, os, signal
print(json.dumps({
    "cwd": os.getcwd(),
    "env": {k: v for k, v in os.environ.items() if k != "BBX_RUN_COOKIE"},
    "cookie": "BBX_RUN_COOKIE" in os.environ,
    "session_leader": os.getsid(0) == os.getpid(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "cgroup": open("/proc/self/cgroup").read().strip().splitlines()[-1],
}))
"""

AUTO = "auto"  # what a slave picks: clone3 into a cgroup, else posix_spawn, else fork
SPAWNERS = [AUTO, "fork"]


def fast_spawn_missing() -> str | None:
    how = choose_spawner()
    return None if how.startswith("posix_spawn") else how


def drive(tmp_path, spawner: str, command, *extra: str, env: dict | None = None,
          inherit: bool = True, timeout: float = 40) -> dict:
    full_env = dict(os.environ if inherit else {}, **(env or {}))
    full_env.pop(SPAWN_ENV, None)
    if spawner == "fork":
        full_env[SPAWN_ENV] = "fork"
    args = {"workdir": "build", "command": command}
    proc = subprocess.run([PY, str(DRIVER), str(tmp_path / "builder"), "shell", json.dumps(args),
                           *extra], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    updates = [tuple(line["update"]) for line in lines if "update" in line]
    assert any("complete" in line for line in lines), proc.stdout[-2000:] + proc.stderr[-2000:]
    spawned = [line["spawned_by"] for line in lines if "spawned_by" in line]
    return {"rc": [v for k, v in updates if k == "rc"], "spawned_by": spawned[:1],
            "stdout": "".join(v for k, v in updates if k == "stdout"),
            "stderr": "".join(v for k, v in updates if k == "stderr")}


@pytest.fixture(params=SPAWNERS)
def spawner(request):
    if request.param == AUTO and fast_spawn_missing():
        pytest.skip(f"the slave would fork here: {fast_spawn_missing()}")
    return request.param


def world(tmp_path, spawner, *extra, env=None) -> dict:
    out = drive(tmp_path, spawner, [PY, "-c", PROBE], *extra, env=env)
    assert out["rc"] == [0], out
    return dict(json.loads(out["stdout"]), spawned_by=out["spawned_by"])


def test_the_command_gets_its_workdir_session_descriptors_and_signals(tmp_path, spawner):
    seen = world(tmp_path, spawner)
    assert seen["cwd"] == str(tmp_path / "builder" / "build")
    assert seen["session_leader"] and seen["cookie"]
    assert seen["fds"][:3] == [0, 1, 2] and len(seen["fds"]) <= 4  # + the listing's own
    # Python ignores SIGPIPE (so the probe cannot tell); grep inherits what it was given.
    status = drive(tmp_path, spawner, ["grep", "SigIgn", "/proc/self/status"])["stdout"]
    assert not int(status.split(":")[1], 16) & (1 << (signal.SIGPIPE - 1)), status


@pytest.mark.parametrize("oldpwd", [None, "/somewhere/else"])
def test_both_spawners_give_the_same_environment(tmp_path, oldpwd):
    if fast_spawn_missing():
        pytest.skip(f"the slave would fork here: {fast_spawn_missing()}")
    env = {k: v for k, v in os.environ.items() if k not in ("OLDPWD", SPAWN_ENV)}
    env["BBX_TEST_VALUE"] = "a b\tc"
    if oldpwd:
        env["OLDPWD"] = oldpwd
    seen = {}
    for spawner in SPAWNERS:
        out = drive(tmp_path, spawner, [PY, "-c", PROBE], env=env, inherit=False)
        seen[spawner] = json.loads(out["stdout"])["env"]
        seen[spawner].pop(SPAWN_ENV, None)  # how the driver was told to fork
    assert seen[AUTO] == seen["fork"]
    assert seen[AUTO].get("OLDPWD") == oldpwd  # dash's cd neither adds nor changes it
    assert seen[AUTO]["BBX_TEST_VALUE"] == "a b\tc"
    assert seen[AUTO]["PWD"] == str(tmp_path / "builder" / "build")


def test_the_command_is_born_in_its_runs_cgroup(tmp_path, spawner):
    parent, why = cg.own_cgroup_dir()
    if parent is None:
        pytest.skip(f"no cgroup v2 here: {why}")
    seen = world(tmp_path, spawner, "--contain", "cgroup")
    own = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1]
    assert seen["cgroup"] != own and seen["cgroup"].startswith(own.rstrip("/") + "/bbx-driver-")
    # Born there (clone3), not moved in: a move waits out an RCU grace period (~10 ms).
    assert seen["spawned_by"] == (["clone3"] if spawner == AUTO else ["fork"])


def test_without_a_cgroup_the_command_is_spawned_without_fork(tmp_path, spawner):
    seen = world(tmp_path, spawner)
    assert seen["spawned_by"] == (["posix_spawn"] if spawner == AUTO else ["fork"])


def test_the_command_dies_with_the_process_that_started_it(tmp_path, spawner):
    # No containment and no guard: only the parent-death signal can stop it.
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    env = dict(os.environ)
    env.pop(SPAWN_ENV, None)
    if spawner == "fork":
        env[SPAWN_ENV] = "fork"
    driver = subprocess.Popen([PY, str(DRIVER), str(tmp_path / "builder"), "shell",
                               json.dumps({"workdir": "build", "command": [PY, "-c", code]})],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    child = None
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, what="the command")
        child = int(pid_file.read_text())
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        wait_until(lambda: not alive(child), 15, what="the command to die with its parent")
    finally:
        for pid in (driver.pid, child):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def test_a_program_that_cannot_run_gets_a_shells_exit_codes(tmp_path, spawner):
    script = tmp_path / "builder" / "build" / "not-executable"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    assert drive(tmp_path, spawner, [str(script)])["rc"] == [126]
    assert drive(tmp_path, spawner, ["no-such-program-bbx"])["rc"] == [127]
