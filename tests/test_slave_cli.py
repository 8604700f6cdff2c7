"""`bbx slave create | start | stop | status` as an operator uses them (real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time

from tests.support import BBX, EXIT_DEADLINE, Proc, file_contains, refused_port, run_bbx, wait_until


def _free_port() -> int:
    # Held bound until the process ends: no parallel test's master can be given it.
    return refused_port()


def _one_clear_line(r):
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _create(tmp_path, *extra):
    d = tmp_path / "slave"
    r = run_bbx("slave", "create", d, f"127.0.0.1:{_free_port()}", "w1", "pw", "--maxdelay", "2", *extra)
    assert r.returncode == 0, r.stderr
    return d


def test_create_with_master_address_writes_config_and_info(tmp_path):
    d = tmp_path / "slave"
    r = run_bbx("slave", "create", d, "ci.example.org", "w1", "pw", "--keepalive", "30",
                "--umask", "0o022", "--allow-shutdown", "file", "--info-admin", "Ada <ada@x.org>")
    assert r.returncode == 0, r.stderr
    text = (d / "slave.toml").read_text()
    assert 'connection = "tcp:host=ci.example.org:port=9989"' in text
    assert "keepalive = 30" in text and 'umask = "0o022"' in text and 'allow_shutdown = "file"' in text
    assert stat.S_IMODE((d / "slave.toml").stat().st_mode) == 0o600
    assert (d / "info" / "admin").read_text() == "Ada <ada@x.org>\n"
    assert (d / "info" / "host").exists()


def test_create_with_tls_uses_a_tls_endpoint(tmp_path):
    d = tmp_path / "slave"
    r = run_bbx("slave", "create", d, "ci.example.org:1234", "w1", "pw", "--use-tls")
    assert r.returncode == 0, r.stderr
    assert 'connection = "tls:host=ci.example.org:port=1234"' in (d / "slave.toml").read_text()


def test_create_with_connection_string_takes_name_and_password_only(tmp_path):
    d = tmp_path / "slave"
    r = run_bbx("slave", "create", d, "--connection-string", "unix:path=/tmp/x.sock", "w1", "pw")
    assert r.returncode == 0, r.stderr
    text = (d / "slave.toml").read_text()
    assert 'connection = "unix:path=/tmp/x.sock"' in text and 'name = "w1"' in text


def test_create_rejects_a_bad_master_address(tmp_path):
    r = run_bbx("slave", "create", tmp_path / "slave", "host:notaport", "w1", "pw")
    assert r.returncode == 2
    assert "bad port" in _one_clear_line(r)
    assert not (tmp_path / "slave").exists()


def test_create_rejects_a_bad_connection_string(tmp_path):
    r = run_bbx("slave", "create", tmp_path / "slave", "--connection-string", "bogus:x=1", "w1", "pw")
    assert r.returncode == 2
    assert "bogus:x=1" in _one_clear_line(r)


def test_create_explains_a_wrong_number_of_arguments(tmp_path):
    r = run_bbx("slave", "create", tmp_path / "slave", "127.0.0.1", "w1")
    assert r.returncode == 2
    assert "MASTER NAME PASSWORD" in _one_clear_line(r)


def test_create_refuses_to_overwrite_without_force(tmp_path):
    d = _create(tmp_path)
    r = run_bbx("slave", "create", d, "127.0.0.1", "w1", "pw")
    assert r.returncode == 2 and "--force" in _one_clear_line(r)
    assert run_bbx("slave", "create", d, "127.0.0.1", "w1", "pw", "--force").returncode == 0


def test_start_in_a_missing_directory_is_one_clear_error(tmp_path):
    r = run_bbx("slave", "start", tmp_path / "nope")
    assert r.returncode == 2
    assert "does not exist" in _one_clear_line(r)


def test_start_with_malformed_config_names_file_and_line(tmp_path):
    d = _create(tmp_path)
    (d / "slave.toml").write_text(re.sub(r"(?m)^keepalive = \d+", "keepalive = [",
                                         (d / "slave.toml").read_text()))
    r = run_bbx("slave", "start", d)
    assert r.returncode == 2
    line = _one_clear_line(r)
    assert "slave.toml" in line and "line" in line


def test_start_with_a_bad_connection_string_in_config_is_one_clear_error(tmp_path):
    d = _create(tmp_path)
    text = (d / "slave.toml").read_text()
    (d / "slave.toml").write_text(text.replace('connection = "tcp:', 'connection = "nonsense:'))
    r = run_bbx("slave", "start", d)
    assert r.returncode == 2
    assert "connection" in _one_clear_line(r)


def test_foreground_slave_logs_writes_pid_and_stops_cleanly_on_sigterm(tmp_path):
    d = _create(tmp_path)
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        assert (d / "slave.pid").read_text().strip() == str(proc.pid)
        assert file_contains(d / "slave.log", "cannot connect to")
        first = (d / "slave.log").read_text().splitlines()[0]
        assert first[:4].isdigit() and first[4] == "-", "log lines carry a timestamp"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        assert not (d / "slave.pid").exists()
        assert file_contains(d / "slave.log", "slave stopped")
    finally:
        proc.terminate()


def test_sigint_stops_a_foreground_slave(tmp_path):
    d = _create(tmp_path)
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        assert not (d / "slave.pid").exists()
    finally:
        proc.terminate()


def test_status_tells_running_or_not_with_master_and_last_state(tmp_path):
    d = _create(tmp_path)
    r = run_bbx("slave", "status", d)
    assert r.returncode == 1 and "not running" in r.stdout
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        r = run_bbx("slave", "status", d)
        assert r.returncode == 3, r.stdout + r.stderr  # running, but cannot connect
        assert f"running (pid {proc.pid})" in r.stdout
        assert "master: tcp:host=127.0.0.1:port=" in r.stdout
        assert "connection: disconnected: refused" in r.stdout
        state = json.loads(run_bbx("slave", "status", d, "--json").stdout)
        assert state["running"] and state["connection"]["reason"] == "refused"
        assert state["connection"]["pid"] == proc.pid and state["exit"] == 3
    finally:
        proc.terminate()
    r = run_bbx("slave", "status", d)
    assert r.returncode == 1 and "last connection state (an earlier run): stopped" in r.stdout


def test_a_second_start_is_refused_while_running(tmp_path):
    d = _create(tmp_path)
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        r = run_bbx("slave", "start", d)
        assert r.returncode == 2  # a configuration problem (README, exit codes)
        assert "already running" in _one_clear_line(r)
    finally:
        proc.terminate()


def test_daemon_start_without_a_master_reports_the_reason_and_keeps_trying(tmp_path):
    d = _create(tmp_path)
    try:
        t0 = time.monotonic()
        r = run_bbx("slave", "start", "--daemon", d, timeout=30)
        assert r.returncode == 3  # cannot connect
        line = _one_clear_line(r)
        assert "has not attached" in line and "connection refused" in line
        # It waited for the attach (about 10 s) before giving the reason; run_bbx's timeout
        # bounds the rest, so no upper bound here (that would be a timing assertion).
        assert time.monotonic() - t0 > 9
        pid = int((d / "slave.pid").read_text())
        assert run_bbx("slave", "status", d).returncode == 3
        r = run_bbx("slave", "stop", d)
        assert r.returncode == 0 and f"slave stopped (pid {pid})" in r.stdout
        assert run_bbx("slave", "status", d).returncode == 1
    finally:
        _kill_from_pidfile(d)


def test_stop_when_not_running_says_so_and_succeeds(tmp_path):
    d = _create(tmp_path)
    r = run_bbx("slave", "stop", d)
    assert r.returncode == 0 and "not running" in r.stdout
    (d / "slave.pid").write_text("999999\n")
    r = run_bbx("slave", "stop", d)
    assert r.returncode == 0 and "stale" in r.stdout
    assert not (d / "slave.pid").exists()


def test_umask_is_applied_when_the_slave_starts(tmp_path):
    d = _create(tmp_path, "--umask", "0o077")
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        with open(f"/proc/{proc.pid}/status") as f:
            umask = [ln.split()[1] for ln in f if ln.startswith("Umask:")][0]
        assert umask == "0077"
    finally:
        proc.terminate()


def _kill_from_pidfile(d):
    try:
        pid = int((d / "slave.pid").read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sighup_without_allow_shutdown_stops_the_slave_cleanly(tmp_path):
    d = _create(tmp_path)
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        assert not (d / "slave.pid").exists()
        assert file_contains(d / "slave.log", "slave stopped")
    finally:
        proc.terminate()


def test_graceful_shutdown_signal_while_not_attached_stops_at_once(tmp_path):
    d = _create(tmp_path, "--allow-shutdown", "signal")
    proc = Proc([BBX, "slave", "start", d], log_path=tmp_path / "out.txt")
    try:
        proc.wait_for_output("cannot connect to", 20)
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.popen.wait(EXIT_DEADLINE) == 0
        assert "graceful shutdown requested (SIGHUP received); not attached, stopping now" in proc.output()
    finally:
        proc.terminate()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_slaves_own_files_are_private_whatever_the_umask(tmp_path):
    from tests.buildfarm import Farm, master_toml

    farm = Farm(tmp_path, master_toml('[[builders]]\nname = "b"\nslaves = ["s1"]\n'))
    try:
        farm.start_master()
        d = tmp_path / "s1"
        # An old bbx left a world-readable log: the slave makes it private on start.
        d.mkdir(mode=0o755)
        (d / "slave.log").write_text("")
        os.chmod(d / "slave.log", 0o644)
        r = run_bbx("slave", "create", d, f"127.0.0.1:{farm.port}", "s1", "pw-s1", "--umask", "0o000",
                    "--maxdelay", "1")
        assert r.returncode == 0, r.stderr
        farm.start_slave()
        assert {p: _mode(d / p) for p in ("", "info")} == {"": 0o700, "info": 0o700}
        for name in ("slave.toml", "info/admin", "info/host", "slave.log", "slave.pid"):
            assert _mode(d / name) == 0o600, name
        # What a command creates is the build's business: the configured umask applies.
        run = farm.bbx("run", "b", "--", "sh", "-c", "echo x > made-by-the-build")
        assert run.returncode == 0, run.stderr
        assert _mode(d / "b" / "build" / "made-by-the-build") == 0o666
    finally:
        farm.stop()
