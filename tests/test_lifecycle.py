"""bbx master status | restart and bbx slave restart, on real processes."""

from __future__ import annotations

import json

from tests.buildfarm import Farm, master_toml
from tests.support import run_bbx, wait_until


def test_master_status_restart_and_slave_restart(tmp_path):
    farm = Farm(tmp_path, master_toml(""))
    try:
        down = run_bbx("master", "status", farm.dir)
        assert down.returncode == 1 and "not running" in down.stdout
        assert run_bbx("master", "start", farm.dir, "--daemon").returncode == 0
        up = run_bbx("master", "status", farm.dir, "--json")
        assert up.returncode == 0, up.stdout + up.stderr
        report = json.loads(up.stdout)
        assert report["running"] and report["slaves"] == {"configured": 1, "connected": 0}
        first_pid = report["pid"]

        basedir = tmp_path / "s1"
        assert run_bbx("slave", "create", basedir, f"127.0.0.1:{farm.port}", "s1", "pw-s1",
                       "--maxdelay", "1").returncode == 0
        assert run_bbx("slave", "start", basedir, "--daemon").returncode == 0
        slave_pid = int((basedir / "slave.pid").read_text())
        restarted = run_bbx("slave", "restart", basedir)
        assert restarted.returncode == 0, restarted.stderr
        assert f"slave stopped (pid {slave_pid})" in restarted.stdout and "attached" in restarted.stdout
        assert int((basedir / "slave.pid").read_text()) != slave_pid

        again = run_bbx("master", "restart", farm.dir)
        assert again.returncode == 0, again.stderr
        assert f"stopped (pid {first_pid})" in again.stdout and "master started" in again.stdout
        report = json.loads(run_bbx("master", "status", farm.dir, "--json").stdout)
        assert report["running"] and report["pid"] != first_pid
    finally:
        run_bbx("slave", "stop", tmp_path / "s1")
        run_bbx("master", "stop", farm.dir)


def test_master_status_of_a_master_that_does_not_answer_exits_3(tmp_path):
    import os
    import signal

    farm = Farm(tmp_path, master_toml(""))
    try:
        assert run_bbx("master", "start", farm.dir, "--daemon").returncode == 0
        pid = int((farm.dir / "master.pid").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            r = run_bbx("master", "status", farm.dir, "--timeout", "1", timeout=30)
            assert r.returncode == 3 and "not answering" in r.stdout
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: run_bbx("master", "status", farm.dir).returncode == 0, 20,
                   what="the master answering again")
    finally:
        run_bbx("master", "stop", farm.dir)
