"""A bbx slave serving a REAL Buildbot 4.3 master (tests/realmaster.py): what a build sees.

Already covered elsewhere, so not repeated here (same real master, same bbx slave):
  ShellCommand build -> SUCCESS        tests/test_slave_realmaster.py::test_shell_build_succeeds
  a step exiting 3 -> FAILURE          tests/test_slave_realmaster.py::test_build_exiting_3_fails
  FileDownload/FileUpload (small file) tests/test_slave_realmaster.py::test_file_transfer_build_succeeds
  SIGTERM to the slave mid-step -> RETRY, step process gone
                                       tests/test_slave_realmaster.py::test_sigterm_kills_the_running_command_and_the_master_retries_the_build
Here: a multi-block binary file round trip checked by sha256, and a slave SIGKILLed mid-step
(b-slow: its step writes its pid to <master dir>/slow.pid, then `exec sleep 60`).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests import realmaster
from tests.support import BBX, Proc, run_bbx, wait_until

ATTACHED = "message from master: attached"

# An extra builder spliced into tests/realmaster.py's master.cfg (which defines `_here`, the
# master's basedir, `util`, `steps` and `BUILDERS`).
EXTRA_BUILDERS_CFG = r'''
f_sha = util.BuildFactory()
f_sha.addStep(steps.FileDownload(mastersrc=os.path.join(_here, 'payload.bin'),
                                 workerdest='payload.bin'))
f_sha.addStep(steps.FileUpload(workersrc='payload.bin',
                               masterdest=os.path.join(_here, 'payload.back')))
BUILDERS.append(('b-sha', f_sha))
'''

# Not a multiple of the transfer block size (16 KiB in Buildbot 4.3's FileDownload/FileUpload),
# and many blocks long.
PAYLOAD_SIZE = 3 * 1024 * 1024 + 7

# How soon, after its slave died, a command's process must be gone.
ORPHAN_DEADLINE = 10.0


@pytest.fixture
def master(tmp_path):
    """A real Buildbot 4.3 master with builder b-sha as well as the stock ones."""
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
    """Start b-slow, SIGKILL the bbx slave once the step's `sleep 60` runs; yield
    (master, revision, sleep pid, monotonic time of the kill). Kills the sleep afterwards."""
    pidfile = master.basedir / "slow.pid"
    rev = master.send_change("b-slow")
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
    results = wait_until(lambda: master.build_results(rev), 30, what="the build to end")
    # Buildbot 4.3: Build.lostRemote and BuildStep (ConnectionLost) both set RETRY
    # (buildbot/process/build.py, buildstep.py); the request goes back to the queue.
    assert results == ["RETRY"]


def test_a_slave_killed_mid_step_leaves_no_orphan_process(killed_mid_step):
    _, _, pid, killed_at = killed_mid_step
    remaining = ORPHAN_DEADLINE - (time.monotonic() - killed_at)
    wait_until(lambda: not alive(pid), max(remaining, 0.1),
               what=f"the step's sleep (pid {pid}) to die with its slave")
