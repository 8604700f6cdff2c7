"""`bbx master stop` / `bbx slave stop` never signal a process that is not bbx."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import run_bbx


@pytest.fixture
def stranger():
    """A live process that is not bbx, whose pid a stale pid file might name."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait(5)


def test_master_stop_leaves_a_foreign_process_named_by_a_stale_pid_file_alone(tmp_path, stranger):
    assert run_bbx("master", "create", tmp_path / "m", "--listen", "tcp:0").returncode == 0
    (tmp_path / "m" / "master.pid").write_text(f"{stranger.pid}\n")
    result = run_bbx("master", "stop", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout and "stale" in result.stdout
    assert stranger.poll() is None
    assert not (tmp_path / "m" / "master.pid").exists()


def test_slave_stop_leaves_a_foreign_process_named_by_a_stale_pid_file_alone(tmp_path, stranger):
    made = run_bbx("slave", "create", tmp_path / "s", "127.0.0.1:1", "s1", "pw")
    assert made.returncode == 0, made.stderr
    (tmp_path / "s" / "slave.pid").write_text(f"{stranger.pid}\n")
    result = run_bbx("slave", "stop", tmp_path / "s")
    assert result.returncode == 0, result.stderr
    assert "stale" in result.stdout
    assert stranger.poll() is None


def test_a_stale_pid_file_does_not_block_starting_a_master(tmp_path, stranger):
    assert run_bbx("master", "create", tmp_path / "m", "--listen", "tcp:0:interface=127.0.0.1").returncode == 0
    (tmp_path / "m" / "master.pid").write_text(f"{stranger.pid}\n")
    result = run_bbx("master", "start", tmp_path / "m", "--daemon")
    try:
        assert result.returncode == 0, result.stderr
        assert "listening on" in result.stdout
    finally:
        run_bbx("master", "stop", tmp_path / "m")
