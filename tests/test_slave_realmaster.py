"""A bbx slave against a REAL Buildbot 4.3 master (tests/realmaster.py): attach, stay, build, stop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

import bbx

from tests.realmaster import RealMaster, real_master  # noqa: F401 (fixture)
from tests.support import BBX, EXIT_DEADLINE, Proc, run_bbx, wait_until

ATTACHED = "message from master: attached"
LOGGED_IN = "attached to the master at"  # logged once the login (and so the attach sequence) is done


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    m = RealMaster.start(tmp_path_factory.mktemp("realmaster") / "m", worker="w1", password="pw")
    try:
        yield m
    finally:
        m.stop()


def _slave(tmp_path, master, *extra, password="pw", name="slave"):
    d = tmp_path / name
    r = run_bbx("slave", "create", d, master.address, "w1", password, *extra)
    assert r.returncode == 0, r.stderr
    return d


def _start(tmp_path, d, name="out.txt"):
    return Proc([BBX, "slave", "start", d], log_path=tmp_path / name)


def _wait_detached(master, before: int):
    """Wait until the master has logged one more detach than `before` (so the next test's slave
    is not taken for a duplicate)."""
    wait_until(lambda: master.log().count("Worker.detached(w1)") > before, 20, what="the master to see the detach")


@pytest.fixture
def attached(tmp_path, master):
    """A bbx slave attached to the shared real master; stopped (and seen detached) afterwards."""
    d = _slave(tmp_path, master, "--keepalive", "2")
    detaches = master.log().count("Worker.detached(w1)")
    proc = _start(tmp_path, d)
    try:
        proc.wait_for_output(LOGGED_IN, 20)
        yield proc, d
    finally:
        proc.terminate()
        _wait_detached(master, detaches)


def test_slave_attaches_and_stays_attached_for_30_seconds(master, attached):
    proc, d = attached
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end:
        assert proc.popen.poll() is None, proc.output()[-2000:]
        time.sleep(0.5)
    out = proc.output()
    assert out.count("connected to tcp:") == 1, "no reconnect loop"
    assert "retrying" not in out and "keepalive call failed" not in out
    log = master.log()
    assert log.count("worker 'w1' attaching") - log.count("Worker.detached(w1)") == 1


def test_master_records_the_attach_sequence_and_our_info(master, attached):
    proc, d = attached
    log = master.log()
    assert "Got workerinfo from 'w1'" in log
    for b in ("b1", "b-fail", "b-true", "b-files"):
        assert f"Worker w1 attached to {b}" in log
        assert (d / b).is_dir(), "setBuilderList made the build directories"
    con = sqlite3.connect(f"file:{master.basedir / 'state.sqlite'}?mode=ro", uri=True)
    try:
        info = json.loads(con.execute("SELECT info FROM workers WHERE name='w1'").fetchone()[0])
    finally:
        con.close()
    # The master stores these four of the info keys (buildbot/worker/base.py attached()).
    assert info["admin"] == "Your Name Here <admin@youraddress.invalid>\n"
    assert info["host"] == (d / "info" / "host").read_text()
    assert info["version"] == bbx.__version__


def test_shell_build_succeeds(master, attached):
    assert master.trigger("b1") == "SUCCESS"


def test_build_exiting_3_fails(master, attached):
    assert master.trigger("b-fail") == "FAILURE"


def test_file_transfer_build_succeeds(master, attached):
    assert master.trigger("b-files") == "SUCCESS"
    assert (master.basedir / "uploaded.json").read_text() == (master.basedir / "harness.json").read_text()
    assert (master.basedir / "uploaded-dir" / "sub" / "b.txt").read_text() == "dir-ok\n"


def test_wrong_password_is_reported_and_retried(tmp_path, master):
    d = _slave(tmp_path, master, "--maxdelay", "2", password="wrong")
    proc = _start(tmp_path, d)
    try:
        wait_until(lambda: proc.output().count("unauthorized") >= 3, 30, what="three refused logins")
        assert proc.popen.poll() is None, "the slave never exits on a refused login"
        lines = [ln for ln in proc.output().splitlines() if "unauthorized" in ln]
        assert all("retrying in" in ln for ln in lines)
        assert ATTACHED not in proc.output()
    finally:
        proc.terminate()


def test_duplicate_name_is_retried_until_the_first_slave_leaves(tmp_path, master, attached):
    d2 = _slave(tmp_path, master, "--maxdelay", "2", name="second")
    second = _start(tmp_path, d2, name="second.txt")
    first, _ = attached
    try:
        second.wait_for_output("rejecting duplicate worker", 20)
        wait_until(lambda: second.output().count("rejecting duplicate") >= 2, 20, what="a retry")
        assert second.popen.poll() is None, "bbx keeps trying where buildbot-worker exits"
        first.terminate()
        second.wait_for_output(LOGGED_IN, 30)
    finally:
        detaches = master.log().count("Worker.detached(w1)")
        second.terminate()
        if LOGGED_IN in second.output():
            _wait_detached(master, detaches)


def test_daemon_start_reports_attached_and_stop_detaches(tmp_path, master):
    d = _slave(tmp_path, master)
    detaches = master.log().count("Worker.detached(w1)")
    try:
        r = run_bbx("slave", "start", "--daemon", d, timeout=30)
        assert r.returncode == 0, r.stderr
        pid = int((d / "slave.pid").read_text())
        assert f"started (pid {pid}) and attached" in r.stdout
        s = run_bbx("slave", "status", d)
        assert s.returncode == 0 and "connection: attached since" in s.stdout
        r = run_bbx("slave", "stop", d)
        assert r.returncode == 0 and "slave stopped" in r.stdout
        _wait_detached(master, detaches)
    finally:
        run_bbx("slave", "stop", d)


def test_silent_master_is_dropped_and_rejoined(tmp_path, master):
    d = _slave(tmp_path, master, "--keepalive", "1", "--keepalive-timeout", "3", "--maxdelay", "2")
    detaches = master.log().count("Worker.detached(w1)")
    proc = _start(tmp_path, d)
    try:
        proc.wait_for_output(LOGGED_IN, 20)
        os.kill(master.pid, signal.SIGSTOP)
        try:
            proc.wait_for_output("dropping the connection", 20)
        finally:
            os.kill(master.pid, signal.SIGCONT)
        wait_until(lambda: proc.output().count("attached to the master at") >= 2, 40,
                   what="the slave to attach again")
    finally:
        proc.terminate()
        _wait_detached(master, detaches)


def test_sighup_asks_the_master_for_a_graceful_shutdown(tmp_path, master):
    d = _slave(tmp_path, master, "--allow-shutdown", "signal")
    detaches = master.log().count("Worker.detached(w1)")
    proc = _start(tmp_path, d)
    try:
        proc.wait_for_output(LOGGED_IN, 20)
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        out = proc.output()
        assert "graceful shutdown requested" in out
        assert "the master asked this slave to shut down" in out
        _wait_detached(master, detaches)
    finally:
        proc.terminate()


def test_touching_the_shutdown_stamp_asks_for_a_graceful_shutdown(tmp_path, master):
    d = _slave(tmp_path, master, "--allow-shutdown", "file")
    detaches = master.log().count("Worker.detached(w1)")
    proc = _start(tmp_path, d)
    try:
        proc.wait_for_output(LOGGED_IN, 20)
        (d / "shutdown.stamp").write_text("")
        assert proc.popen.wait(25) == 0  # the stamp is polled every 10 s (docs/protocol.md §4.5)
        assert "the master asked this slave to shut down" in proc.output()
        _wait_detached(master, detaches)
    finally:
        proc.terminate()


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _slow_step_pid(master) -> int:
    path = master.basedir / "slow.pid"
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), 30,
                          what="the slow step to start"))


def test_sigterm_kills_the_running_command_and_the_master_retries_the_build(tmp_path, real_master):
    d = _slave(tmp_path, real_master)
    proc = _start(tmp_path, d)
    step_pid = None
    try:
        proc.wait_for_output(LOGGED_IN, 20)
        rev = real_master.send_change("b-slow")
        step_pid = _slow_step_pid(real_master)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        assert _pid_gone(step_pid), "a clean stop kills the running command"
        wait_until(lambda: real_master.build_results(rev), 20, what="the interrupted build to end")
        assert real_master.build_results(rev)[0] == "RETRY"
    finally:
        proc.terminate()
        if step_pid and not _pid_gone(step_pid):
            os.kill(step_pid, signal.SIGKILL)


def test_a_vanished_master_kills_the_command_and_the_slave_keeps_retrying(tmp_path, real_master):
    d = _slave(tmp_path, real_master, "--maxdelay", "2")
    proc = _start(tmp_path, d)
    step_pid = None
    try:
        proc.wait_for_output(LOGGED_IN, 20)
        real_master.send_change("b-slow")
        step_pid = _slow_step_pid(real_master)
        os.kill(real_master.pid, signal.SIGKILL)
        proc.wait_for_output("lost the connection to tcp:host=127.0.0.1", 20)
        wait_until(lambda: _pid_gone(step_pid), 15, what="the command to be killed")
        wait_until(lambda: proc.output().count("connection refused; retrying in") >= 2, 20,
                   what="reconnect attempts")
        assert proc.popen.poll() is None
    finally:
        proc.terminate()
        if step_pid and not _pid_gone(step_pid):
            os.kill(step_pid, signal.SIGKILL)
