"""Breaking the slave on purpose: orphans that hide, a SIGKILLed slave, stale cgroups, TERM traps.

Issue 8 case 6, both reproductions, run against a real master and a real slave, once with
per-command cgroups (where this host allows them) and once without (the slave as subreaper).
"Nothing survives" is checked by scanning /proc for a marker unique to each test: the
programs run under a name like bbx-orphan-<uuid> (a symlink to sleep), which no other test
and no `env -i` can take away.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bbx.slave import cgroup as cg
from bbx.slave.containment import slave_key
from tests.buildfarm import Farm, master_toml
from tests.support import file_contains, marked, run_bbx, wait_until

BUILDER = '[[builders]]\nname = "b"\nslaves = ["s1"]\n'
DRIVER = Path(__file__).with_name("drive_command.py")
PY = sys.executable


def _cgroups_usable() -> bool:
    parent, _ = cg.own_cgroup_dir()
    if parent is None:
        return False
    probe = os.path.join(parent, f"bbx-probe-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    try:
        return os.path.exists(os.path.join(probe, "cgroup.kill"))
    finally:
        os.rmdir(probe)


CGROUPS = _cgroups_usable()
MODES = [pytest.param("cgroup", marks=pytest.mark.skipif(not CGROUPS, reason="no writable cgroup v2")),
         "subreaper"]


def sleeper(tmp_path: Path) -> str:
    """A path that runs sleep under a name no other process has."""
    path = tmp_path / f"bbx-orphan-{uuid.uuid4().hex}"
    path.symlink_to(shutil.which("sleep"))
    return str(path)


def zombie_children(pid: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2:].split()
            if fields[0] == b"Z" and int(fields[1]) == pid:
                found.add(int(name))
    return found


@pytest.fixture
def reap_marker():
    """Markers a test used; whatever still runs under them is killed at the end."""
    markers: list[str] = []
    yield markers
    for marker in markers:
        for pid in marked(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def farm_with_slave(tmp_path, mode: str, *extra_create: str) -> Farm:
    farm = Farm(tmp_path, master_toml(BUILDER))
    farm.start_master()
    made = run_bbx("slave", "create", tmp_path / "s1", f"127.0.0.1:{farm.port}", "s1", "pw-s1",
                   "--maxdelay", "1", *(["--no-cgroup"] if mode == "subreaper" else []), *extra_create)
    assert made.returncode == 0, made.stderr
    farm.start_slave()
    return farm


def instance_dir(basedir: Path, slave_pid: int) -> str:
    parent, why = cg.own_cgroup_dir()
    assert parent is not None, why
    return os.path.join(parent, f"bbx-{slave_key(str(basedir))}-{slave_pid}")


def guard_pids(slave_pid: int) -> set[int]:
    return {p for p in marked("bbx.slave.guard", anywhere=True)
            if f"--slave\0{slave_pid}\0".encode() in Path(f"/proc/{p}/cmdline").read_bytes()}


@pytest.mark.parametrize("mode", MODES)
def test_a_sigkilled_slave_leaves_no_process_of_its_command_running(tmp_path, mode, reap_marker):
    # Issue 8 case 6: `sh -c 'sleep 300 & sleep 300'`; only the direct child had PDEATHSIG.
    m = sleeper(tmp_path)
    reap_marker.append(m)
    farm = farm_with_slave(tmp_path, mode)
    try:
        slave = farm.slaves["s1"]
        farm.cli("run", "b", "--", "sh", "-c", f"{m} 300 & {m} 300", name="run")
        wait_until(lambda: len(marked(m)) == 2, 20, what="both sleeps to run")
        os.kill(slave.pid, signal.SIGKILL)
        slave.popen.wait(10)
        wait_until(lambda: not marked(m), 15, what="every sleep to be killed after the slave died")
        log = tmp_path / "s1" / "slave.log"
        wait_until(lambda: file_contains(log, "killed what its commands left"), 10,
                   what="the guard to say what it killed")
        if mode == "cgroup":
            assert not os.path.exists(instance_dir(tmp_path / "s1", slave.pid))
    finally:
        farm.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_timed_out_command_leaves_no_setsid_env_i_orphan_and_the_header_names_it(tmp_path, mode,
                                                                                   reap_marker):
    # Issue 8 case 6: the orphan left the session and the group, dropped the cookie (env -i)
    # and every pipe; bbx run still exits 124.
    m = sleeper(tmp_path)
    reap_marker.append(m)
    farm = farm_with_slave(tmp_path, mode)
    try:
        run = farm.bbx("run", "b", "--timeout", "3", "--", "sh", "-c",
                       f"(setsid env -i {m} 301 </dev/null >/dev/null 2>&1 &); sleep 60", timeout=60)
        assert run.returncode == 124, run.stdout + run.stderr
        wait_until(lambda: not marked(m), 10, what="the setsid env -i sleep to be killed")
        assert "more processes besides the command itself:" in run.stderr
        assert f"({os.path.basename(m)} 301)" in run.stderr
        slave_pid = farm.slaves["s1"].pid
        wait_until(lambda: not zombie_children(slave_pid), 5, what="the slave to reap its orphans")
    finally:
        farm.stop()


@pytest.mark.parametrize("mode", MODES)
def test_background_processes_of_a_finished_command_die_with_the_slave(tmp_path, mode, reap_marker):
    # Buildbot lets a background job that let go of the output outlive its step (a later step
    # may use it); it must not outlive the slave.
    m = sleeper(tmp_path)
    reap_marker.append(m)
    farm = farm_with_slave(tmp_path, mode)
    try:
        run = farm.bbx("run", "b", "--", "sh", "-c", f"{m} 300 </dev/null >/dev/null 2>&1 &")
        assert run.returncode == 0, run.stderr
        assert len(marked(m)) == 1
        farm.slaves["s1"].terminate()
        wait_until(lambda: not marked(m), 10, what="the background sleep to die with the slave")
    finally:
        farm.stop()


@pytest.mark.skipif(not CGROUPS, reason="no writable cgroup v2")
def test_each_command_has_its_own_cgroup_which_is_removed_after_it(tmp_path):
    farm = farm_with_slave(tmp_path, "cgroup")
    try:
        slave_pid = farm.slaves["s1"].pid
        root = instance_dir(tmp_path / "s1", slave_pid)
        run = farm.bbx("run", "b", "--", "cat", "/proc/self/cgroup")
        assert run.returncode == 0, run.stderr
        [line] = [ln for ln in run.stdout.splitlines() if ln.startswith("0::")]
        assert line.startswith("0::") and f"/bbx-{slave_key(str(tmp_path / 's1'))}-{slave_pid}/" in line
        wait_until(lambda: os.path.isdir(root) and not [e for e in os.scandir(root) if e.is_dir()], 10,
                   what="the command's cgroup to be removed")
        farm.slaves["s1"].terminate()
        assert not os.path.exists(root)
    finally:
        farm.stop()


@pytest.mark.skipif(not CGROUPS, reason="no writable cgroup v2")
def test_a_restarted_slave_kills_and_removes_the_cgroups_a_killed_one_left(tmp_path, reap_marker):
    m = sleeper(tmp_path)
    reap_marker.append(m)
    farm = farm_with_slave(tmp_path, "cgroup")
    try:
        slave = farm.slaves["s1"]
        farm.cli("run", "b", "--", "sh", "-c", f"{m} 300", name="run")
        wait_until(lambda: marked(m), 20, what="the sleep to run")
        # The worst case: the guard dies too (kill -9 of both), so nothing cleans up at once.
        for pid in guard_pids(slave.pid):
            os.kill(pid, signal.SIGKILL)
        os.kill(slave.pid, signal.SIGKILL)
        slave.popen.wait(10)
        stale = instance_dir(tmp_path / "s1", slave.pid)
        assert marked(m) and os.path.isdir(stale)
        farm.start_slave()
        wait_until(lambda: not marked(m), 15, what="the restarted slave to kill the stale sleep")
        wait_until(lambda: not os.path.exists(stale), 10, what="the stale cgroup to be removed")
        assert file_contains(tmp_path / "s1" / "slave.log", "left by an earlier process of this slave")
    finally:
        farm.stop()


# -- the kill's signal and grace (Buildbot's sigtermTime / interruptSignal), no master needed ----


def drive(tmp_path, args: dict, *extra: str, timeout: float = 60) -> dict:
    proc = subprocess.run([PY, str(DRIVER), str(tmp_path / "builder"), "shell", json.dumps(args), *extra],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    updates = [tuple(line["update"]) for line in lines if "update" in line]
    assert any("complete" in line for line in lines), proc.stdout[-2000:] + proc.stderr[-3000:]
    return {"rc": [v for k, v in updates if k == "rc"],
            "header": "".join(v for k, v in updates if k == "header"),
            "stdout": "".join(v for k, v in updates if k == "stdout"),
            "containment": [line["containment"] for line in lines if "containment" in line]}


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_reaches_a_trap_in_the_tree_and_its_output_is_still_sent(tmp_path, mode):
    script = "trap 'echo cleanup; exit 0' TERM; echo ready; sleep 300 & wait"
    run = drive(tmp_path, {"workdir": "wd", "command": ["sh", "-c", script], "logEnviron": False,
                           "sigtermTime": 10}, "--interrupt-on-output", "ready", "--contain", mode)
    assert run["containment"] == [mode]
    assert "cleanup\n" in run["stdout"]
    assert run["rc"] == [-1]
    assert "did not stop everything" not in run["header"]  # TERM was enough


@pytest.mark.parametrize("mode", MODES)
def test_a_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path, mode, reap_marker):
    m = sleeper(tmp_path)
    reap_marker.append(m)
    script = f"trap '' TERM; echo ready; {m} 300"
    run = drive(tmp_path, {"workdir": "wd", "command": ["sh", "-c", script], "logEnviron": False,
                           "sigtermTime": 1}, "--interrupt-on-output", "ready", "--contain", mode)
    assert "SIGTERM did not stop everything; sending SIGKILL" in run["header"]
    assert f"({os.path.basename(m)} 300)" in run["header"]
    assert run["rc"] == [-1]
    assert not marked(m)


def test_interrupt_signal_other_than_kill_is_followed_by_sigkill(tmp_path, reap_marker, monkeypatch):
    # interruptSignal=TERM without sigtermTime: Buildbot would give up after 5 s and leave the
    # process running; we send SIGKILL then (KILL_GRACE).
    m = sleeper(tmp_path)
    reap_marker.append(m)
    script = f"trap '' TERM; echo ready; {m} 300"
    run = drive(tmp_path, {"workdir": "wd", "command": ["sh", "-c", script], "logEnviron": False,
                           "interruptSignal": "TERM"}, "--interrupt-on-output", "ready")
    assert "SIGTERM did not stop everything; sending SIGKILL" in run["header"]
    assert "failed to kill" not in run["header"]
    assert run["rc"] == [-1]
    assert not marked(m)


@pytest.mark.parametrize("mode", MODES)
def test_double_forked_daemon_without_environment_or_pipes_is_found_on_interrupt(tmp_path, mode,
                                                                                  reap_marker):
    m = sleeper(tmp_path)
    reap_marker.append(m)
    # "ready" once the orphan runs as itself (not as `env` about to exec it), bounded.
    script = (f"(setsid env -i {m} 302 </dev/null >/dev/null 2>&1 &); "
              f"for i in $(seq 1000); do pgrep -xf '{m} 302' >/dev/null && break; sleep 0.01; done; "
              "echo ready; exec sleep 300")
    run = drive(tmp_path, {"workdir": "wd", "command": ["sh", "-c", script], "logEnviron": False},
                "--interrupt-on-output", "ready", "--contain", mode)
    assert run["rc"] == [-1]
    # Named by the kill itself, not by the containment's final stop.
    assert f"({os.path.basename(m)} 302)" in run["header"]
    assert not marked(m)


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_guard_is_replaced_and_the_new_one_still_knows_the_running_command(tmp_path, mode,
                                                                                   reap_marker):
    m = sleeper(tmp_path)
    reap_marker.append(m)
    farm = farm_with_slave(tmp_path, mode)
    try:
        slave = farm.slaves["s1"]
        # Without cgroups only the adoption (replayed to the new guard) can find the first one.
        farm.cli("run", "b", "--", "sh", "-c",
                 f"(setsid env -i {m} 300 </dev/null >/dev/null 2>&1 &); {m} 300", name="run")
        wait_until(lambda: len(marked(m)) == 2, 20, what="both sleeps to run")
        [old] = wait_until(lambda: guard_pids(slave.pid), 10, what="the guard")
        os.kill(old, signal.SIGKILL)
        log = tmp_path / "s1" / "slave.log"
        wait_until(lambda: file_contains(log, "the guard process exited"), 10, what="the slave to notice")
        wait_until(lambda: guard_pids(slave.pid) - {old}, 10, what="a new guard")
        os.kill(slave.pid, signal.SIGKILL)
        slave.popen.wait(10)
        wait_until(lambda: not marked(m), 15, what="the new guard to kill both sleeps")
    finally:
        farm.stop()
