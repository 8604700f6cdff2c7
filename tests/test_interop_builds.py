"""A bbx slave serving a REAL Buildbot 4.3 master (tests/realmaster.py): what a build sees.

Already covered elsewhere, so not repeated here (same real master, same bbx slave):
  ShellCommand build -> SUCCESS        tests/test_slave_realmaster.py::test_shell_build_succeeds
  a step exiting 3 -> FAILURE          tests/test_slave_realmaster.py::test_build_exiting_3_fails
  FileDownload/FileUpload (small file) tests/test_slave_realmaster.py::test_file_transfer_build_succeeds
Here: a multi-block binary file round trip checked by sha256, and a slave SIGKILLed mid-step.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests import realmaster
from tests.support import BBX, Proc, run_bbx, wait_until

ATTACHED = "message from master: attached"

# Extra builders spliced into tests/realmaster.py's master.cfg (it defines `sh`, `_here`,
# `util`, `steps`, `BUILDERS`). `_here` is the master's basedir; the slave runs on the same host,
# so the step can leave the sleep's pid there.
EXTRA_BUILDERS_CFG = r'''
f_sha = util.BuildFactory()
f_sha.addStep(steps.FileDownload(mastersrc=os.path.join(_here, 'payload.bin'),
                                 workerdest='payload.bin'))
f_sha.addStep(steps.FileUpload(workersrc='payload.bin',
                               masterdest=os.path.join(_here, 'payload.back')))
BUILDERS.append(('b-sha', f_sha))

f_sleep = util.BuildFactory()
f_sleep.addStep(steps.ShellCommand(name='sleep', command=sh(
    'echo $$ > ' + os.path.join(_here, 'sleep.pid') + '; exec sleep 30')))
BUILDERS.append(('b-sleep', f_sleep))
'''

# Not a multiple of the transfer block size (16 KiB in Buildbot 4.3's FileDownload/FileUpload),
# and many blocks long.
PAYLOAD_SIZE = 3 * 1024 * 1024 + 7

# How soon, after its slave died, a command's process must be gone.
ORPHAN_DEADLINE = 10.0

_FINISHED_BUILDS = """
SELECT b.results FROM changes c
JOIN buildset_sourcestamps bss ON bss.sourcestampid = c.sourcestampid
JOIN buildrequests br ON br.buildsetid = bss.buildsetid
JOIN builds b ON b.buildrequestid = br.id
WHERE c.revision = ? AND b.complete_at IS NOT NULL
ORDER BY b.id
"""


@pytest.fixture
def master(tmp_path):
    """A real Buildbot 4.3 master with builders b-sha and b-sleep as well as the stock ones."""
    cfg = realmaster.MASTER_CFG.replace("c['builders'] =", EXTRA_BUILDERS_CFG + "\nc['builders'] =")
    assert cfg != realmaster.MASTER_CFG, "tests/realmaster.py's master.cfg changed shape"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(realmaster, "MASTER_CFG", cfg)
        m = realmaster.RealMaster.start(tmp_path / "m", worker="w1", password="pw")
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def slave(tmp_path, master):
    """A foreground `bbx slave start` attached to `master`; killed with its group afterwards."""
    created = run_bbx("slave", "create", tmp_path / "s", master.address, "w1", "pw")
    assert created.returncode == 0, created.stderr
    proc = Proc([BBX, "slave", "start", tmp_path / "s"], log_path=tmp_path / "slave.out")
    try:
        proc.wait_for_output(ATTACHED, 30)
        yield proc
    finally:
        proc.terminate()


def send_change(master: realmaster.RealMaster, builder: str) -> str:
    """Ask for one build of `builder` (without waiting for it); return the change's revision."""
    rev = "bbx-" + uuid.uuid4().hex
    r = subprocess.run(
        [realmaster.BUILDBOT, "sendchange", "--master", master.address,
         "--auth", f"{realmaster.CHANGE_USER}:{realmaster.CHANGE_PASS}", "--who", "bbx-tests",
         "--branch", builder, "--revision", rev, "bbx.txt"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"sendchange failed ({r.returncode}): {r.stdout}{r.stderr}"
    return rev


def finished_builds(master: realmaster.RealMaster, rev: str) -> list[str]:
    """Result names of the finished builds for `rev` (a RETRY leaves its request pending, so
    the request's own completion cannot be waited for)."""
    try:
        con = sqlite3.connect(f"file:{master.basedir / 'state.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(_FINISHED_BUILDS, (rev,)).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return []
    return [realmaster.RESULT_NAMES[res] for (res,) in rows]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_file_download_then_upload_moves_a_multi_block_binary_file_intact(master, slave):
    payload = os.urandom(PAYLOAD_SIZE)
    (master.basedir / "payload.bin").write_bytes(payload)
    assert master.trigger("b-sha") == "SUCCESS", slave.output()[-3000:]
    back = (master.basedir / "payload.back").read_bytes()
    assert len(back) == PAYLOAD_SIZE
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.fixture
def killed_mid_step(master, slave):
    """Start b-sleep, SIGKILL the bbx slave once the step's `sleep 30` runs; yield
    (master, revision, sleep pid, monotonic time of the kill). Kills the sleep afterwards."""
    pidfile = master.basedir / "sleep.pid"
    rev = send_change(master, "b-sleep")
    pid = None
    try:
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 60,
                   what="the sleep step to start")
        pid = int(pidfile.read_text())
        assert alive(pid)
        os.kill(slave.pid, signal.SIGKILL)  # the slave alone: its children are in other sessions
        killed_at = time.monotonic()
        slave.popen.wait(10)
        yield master, rev, pid, killed_at
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_slave_killed_mid_step_makes_the_real_master_retry_the_build(killed_mid_step):
    master, rev, _, _ = killed_mid_step
    results = wait_until(lambda: finished_builds(master, rev), 30, what="the build to end")
    # Buildbot 4.3: Build.lostRemote and BuildStep (ConnectionLost) both set RETRY
    # (buildbot/process/build.py, buildstep.py); the request goes back to the queue.
    assert results == ["RETRY"]


def test_a_slave_killed_mid_step_leaves_no_orphan_process(killed_mid_step):
    _, _, pid, killed_at = killed_mid_step
    remaining = ORPHAN_DEADLINE - (time.monotonic() - killed_at)
    wait_until(lambda: not alive(pid), max(remaining, 0.1),
               what=f"the step's sleep (pid {pid}) to die with its slave")
