"""Builds under faults: absent and busy slaves, lost slaves, stopped and killed masters, bad
store files. Each test has its own real master, real bbx slave and real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

from tests.buildfarm import Farm, build_row, master_toml, stored_log
from tests.support import BBX, EXIT_DEADLINE, run_bbx, wait_until

SLOW = '''
[[builders]]
name = "slow"
slaves = ["s1"]
[[builders.steps]]
name = "wait"
command = "echo started-marker; exec sleep 600"
'''

QUICK = '''
[[builders]]
name = "quick"
slaves = ["s1"]
[[builders.steps]]
command = "echo quick-done"
'''


def farm_of(tmp_path, builders, **kwargs) -> Farm:
    return Farm(tmp_path, master_toml(builders, **kwargs))


def test_a_request_waits_while_the_slave_is_absent_and_runs_when_it_attaches(tmp_path):
    farm = farm_of(tmp_path, QUICK)
    try:
        farm.start_master()
        queued = json.loads(farm.bbx("build", "quick", "--no-wait", "--json").stdout)
        assert queued["position"] == 1 and queued["attached"] == []
        assert [r["id"] for r in farm.queued()] == [queued["request_id"]]
        farm.start_slave()
        build = farm.wait_build(lambda b: b["finished_at"] is not None, what="the queued build")
        assert build["request_id"] == queued["request_id"] and build["result_name"] == "success"
        assert farm.queued() == []
    finally:
        farm.stop()


def test_a_restarted_master_picks_its_queue_up_again(tmp_path):
    farm = farm_of(tmp_path, QUICK)
    try:
        farm.start_master()
        queued = json.loads(farm.bbx("build", "quick", "--no-wait", "--json").stdout)
        farm.master.terminate()
        farm.start_master()
        assert [r["id"] for r in farm.queued()] == [queued["request_id"]]
        farm.start_slave()
        build = farm.wait_build(lambda b: b["finished_at"] is not None, what="the queued build")
        assert build["request_id"] == queued["request_id"] and build["result_name"] == "success"
    finally:
        farm.stop()


def test_max_builds_1_makes_a_second_builder_wait_for_the_slave(tmp_path):
    farm = farm_of(tmp_path, SLOW + QUICK)
    try:
        farm.start_master()
        farm.start_slave()
        farm.bbx("build", "slow", "--no-wait")
        slow = farm.wait_build(lambda b: b["builder"] == "slow", what="the slow build")
        queued = json.loads(farm.bbx("build", "quick", "--no-wait", "--json").stdout)
        assert queued["position"] == 1  # the slave runs one build at a time
        busy = farm.bbx("run", "quick", "--no-wait-for-slave", "--", "true")
        assert busy.returncode == 1 and "busy" in busy.stderr  # the slot is really taken
        farm.bbx("cancel", str(slow["id"]))
        quick = farm.wait_build(lambda b: b["builder"] == "quick" and b["finished_at"] is not None,
                                what="the quick build after the slow one")
        assert quick["result_name"] == "success"
    finally:
        farm.stop()


def test_max_builds_2_runs_two_builders_at_once(tmp_path):
    farm = farm_of(tmp_path, SLOW + QUICK, slaves=(("s1", 2),))
    try:
        farm.start_master()
        farm.start_slave()
        farm.bbx("build", "slow", "--no-wait")
        farm.wait_build(lambda b: b["builder"] == "slow", what="the slow build")
        quick = farm.bbx("build", "quick", "--json")
        assert quick.returncode == 0, quick.stderr
    finally:
        farm.stop()


def test_a_lost_slave_gives_retry_keeps_the_log_and_requeues_the_request_once(tmp_path):
    farm = farm_of(tmp_path, SLOW)
    try:
        farm.start_master()
        farm.start_slave()
        watcher = farm.cli("build", "slow", "--json", name="build")
        first = farm.wait_build(lambda b: b["state"] == "running", what="the first attempt")
        wait_until(lambda: "started-marker" in stored_log(farm.db, first["id"]), 20,
                   what="the step's output")
        farm.kill_slave()
        done = farm.wait_build(lambda b: b["id"] == first["id"] and b["finished_at"] is not None,
                               what="the first attempt to end")
        assert done["result_name"] == "retry"
        assert "started-marker\n" in stored_log(farm.db, first["id"], "stdout")
        assert [r["id"] for r in farm.queued()] == [done["request_id"]]
        farm.start_slave()
        second = farm.wait_build(lambda b: b["id"] != first["id"] and b["state"] == "running",
                                 what="the second attempt")
        assert second["request_id"] == done["request_id"]
        wait_until(lambda: "started-marker" in stored_log(farm.db, second["id"]), 20,
                   what="the second attempt's output")
        farm.kill_slave()
        farm.wait_build(lambda b: b["id"] == second["id"] and b["result_name"] == "retry",
                        what="the second attempt to end")
        assert farm.queued() == []  # retry_lost = 1: not a third time
        wait_until(lambda: watcher.popen.poll() is not None, 20, what="bbx build to end")
        assert watcher.popen.returncode == 1
        assert "queued again" in watcher.output()
    finally:
        farm.stop()


def test_sigterm_mid_build_stops_cleanly_and_records_the_build_as_interrupted(tmp_path):
    farm = farm_of(tmp_path, SLOW)
    try:
        farm.start_master()
        farm.start_slave()
        farm.bbx("build", "slow", "--no-wait")
        build = farm.wait_build(lambda b: b["state"] == "running", what="the build")
        wait_until(lambda: "started-marker" in stored_log(farm.db, build["id"]), 20,
                   what="the step's output")
        os.kill(farm.master.pid, signal.SIGTERM)
        assert farm.master.popen.wait(EXIT_DEADLINE) == 0
        row = build_row(farm.db, build["id"])
        assert row["state"] == "interrupted" and row["interrupted_reason"] == "the master was stopped"
        assert row["finished_at"] is not None
        assert "started-marker\n" in stored_log(farm.db, build["id"], "stdout")
    finally:
        farm.stop()


CHATTY = '''
[[builders]]
name = "chatty"
slaves = ["s1"]
[[builders.steps]]
name = "talk"
command = "i=0; while true; do i=$((i+1)); echo line-$i-abcdefghijklmnopqrstuvwxyz; done"
'''


def test_sigkill_mid_build_loses_nothing_the_cli_saw_and_the_restart_marks_it_interrupted(tmp_path):
    farm = farm_of(tmp_path, CHATTY)
    try:
        farm.start_master()
        farm.start_slave()
        watcher = farm.cli("build", "chatty", "--json", name="build")
        wait_until(lambda: watcher.output().count("line-") > 20000, 30, what="plenty of output")
        os.kill(farm.master.pid, signal.SIGKILL)
        farm.master.popen.wait(10)
        wait_until(lambda: watcher.popen.poll() is not None, 20, what="bbx build to notice")
        seen = "".join(json.loads(ln).get("stdout", "") for ln in watcher.output().splitlines()
                       if ln.startswith("{"))
        assert seen.count("line-") > 20000
        build_id = next(json.loads(ln)["build_id"] for ln in watcher.output().splitlines()
                        if '"buildStarted"' in ln)
        assert build_row(farm.db, build_id)["finished_at"] is None  # nobody closed it
        farm.start_master()
        row = build_row(farm.db, build_id)
        assert row["state"] == "interrupted" and row["finished_at"] is not None
        assert stored_log(farm.db, build_id, "stdout").startswith(seen)
    finally:
        farm.stop()


def _refused(farm: Farm):
    before = farm.db.read_bytes()
    result = run_bbx("master", "start", farm.dir, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert farm.db.read_bytes() == before
    return lines[0]


def test_a_corrupt_store_file_is_one_line_and_left_untouched(tmp_path):
    farm = farm_of(tmp_path, QUICK)
    farm.db.write_bytes(b"this is not a database\n" * 100)
    line = _refused(farm)
    assert "is not a SQLite database" in line and str(farm.db) in line


def test_a_newer_schema_is_one_line_and_left_untouched(tmp_path):
    farm = farm_of(tmp_path, QUICK)
    conn = sqlite3.connect(farm.db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    conn.commit()
    conn.close()
    line = _refused(farm)
    assert "schema version 99" in line and "newer" in line


def test_the_store_path_is_configurable(tmp_path):
    farm = farm_of(tmp_path, QUICK, master_extra='db = "history/builds.db"')
    (farm.dir / "history").mkdir()
    try:
        farm.start_master()
        farm.start_slave()
        assert farm.bbx("build", "quick").returncode == 0
        assert (farm.dir / "history" / "builds.db").stat().st_size > 0
        assert not farm.db.exists()
    finally:
        farm.stop()


def test_a_full_disk_is_logged_and_the_master_keeps_serving(tmp_path):
    import resource

    big = '''
[[builders]]
name = "big"
slaves = ["s1"]
[[builders.steps]]
command = "head -c 4000000 /dev/zero | tr '\\\\0' x"
'''
    farm = farm_of(tmp_path, big + QUICK)
    limit = 3 * 1024 * 1024

    def small_files():
        # Writes past `limit` bytes fail with EFBIG, as on a full disk (SIGXFSZ ignored).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    import subprocess

    out = open(tmp_path / "master-full.out", "wb")
    master = subprocess.Popen([BBX, "master", "start", str(farm.dir)], stdout=out,
                              stderr=subprocess.STDOUT, preexec_fn=small_files,
                              start_new_session=True)
    try:
        wait_until(lambda: (farm.dir / "master.endpoint").exists(), 30, what="the master")
        farm.start_slave()
        result = farm.bbx("build", "big", "--json", timeout=60)
        assert result.returncode in (0, 1)
        wait_until(lambda: "cannot write" in (tmp_path / "master-full.out").read_text(), 20,
                   what="the store error in the master's log")
        assert master.poll() is None
        again = farm.bbx("builds", "--json")
        assert again.returncode == 0, again.stderr
    finally:
        farm.stop()
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(10)
        out.close()
