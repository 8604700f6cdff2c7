"""Several masters, one farm: real bbx masters and slaves on one real PostgreSQL database.

Each test gets a fresh database on the session's server (tests/postgres.py) and its own
masters (tests/pgfarm.py), all on loopback with port 0.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.pgfarm import MultiFarm
from tests.support import wait_until

SPREAD = """
[[builders]]
name = "both"
slaves = ["s1", "s2"]
[[builders.steps]]
name = "work"
command = "echo ran; sleep 1.5"

[[builders]]
name = "onb"
slaves = ["s2"]
[[builders.steps]]
name = "count"
command = "for i in 1 2 3; do echo line $i; done; until [ -e {gate} ]; do sleep 0.05; done; for i in 4 5 6 7 8 9 10 11 12; do echo line $i; sleep 0.1; done"
[[builders.steps]]
name = "after"
command = "echo second step >&2"
"""


@pytest.fixture
def farm(tmp_path, pg_url):
    made = []

    def make(builders=SPREAD, **kwargs):
        # The onb step waits for tmp_path/gate after line 3: the test decides when it ends.
        builders = builders.replace("{gate}", str(tmp_path / "gate"))
        f = MultiFarm(tmp_path, pg_url, builders, **kwargs)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def _rows(pg_url, query, args=()):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


def test_ten_requests_to_one_master_run_once_each_spread_over_both_masters_slaves(farm, pg_url):
    f = farm()
    f.start_master("a")
    f.start_master("b")
    f.start_slave("s1", ["a"])
    f.start_slave("s2", ["b"])
    # Master a knows where s2 is attached (recorded with b's next heartbeat).
    wait_until(lambda: {s["name"]: s["master"] for s in f.json("a", "slaves")}
               == {"s1": "a", "s2": "b"}, 20, interval=0.2, what="s2 shown attached to b")
    table = f.bbx("a", "slaves").stdout.splitlines()
    assert table[0].split()[-1] == "master"
    s2 = next(line.split() for line in table if line.startswith("s2 "))
    assert (s2[1], s2[-1]) == ("elsewhere", "b")
    # Ten at once, faster than one slave can run them.
    clients = [f.cli("a", "build", "both", "--no-wait", "--json", name="submit")
               for _ in range(10)]
    for client in clients:
        assert client.popen.wait(60) == 0, client.output()
    requests = [json.loads(c.output())["request_id"] for c in clients]
    assert len(set(requests)) == 10

    def all_done():
        builds = [b for b in f.builds("a") if b["request_id"] in requests]
        return builds if len(builds) >= 10 and all(b["finished_at"] for b in builds) else None
    builds = wait_until(all_done, 60, interval=0.2, what="ten builds finished")

    assert sorted(b["request_id"] for b in builds) == sorted(requests), "none ran twice"
    assert {b["result_name"] for b in builds} == {"success"}
    assert {b["slave"] for b in builds} == {"s1", "s2"}
    assert {b["master"] for b in builds} == {"a", "b"}
    per_request = _rows(pg_url, "SELECT request_id, COUNT(*) FROM builds GROUP BY request_id")
    assert all(n == 1 for _r, n in per_request)
    assert _rows(pg_url, "SELECT COUNT(*) FROM requests WHERE state <> 'done'") == [(0,)]
    # Build numbers were handed out under a lock: 1..10, none twice.
    assert sorted(b["number"] for b in builds) == list(range(1, 11))
    listed = f.bbx("b", "builds").stdout
    assert "master" in listed, "bbx builds names the master of each build"


def test_a_build_on_master_b_is_followed_live_through_master_a(farm, tmp_path):
    f = farm()
    f.start_master("a")
    f.start_master("b")
    f.start_slave("s2", ["b"])
    answer = json.loads(f.bbx("a", "build", "onb", "--no-wait", "--json").stdout)

    def started():
        return next((b for b in f.builds("a") if b["request_id"] == answer["request_id"]), None)
    build = wait_until(started, 30, what="the build to start on b")
    assert build["master"] == "b"
    follower = f.cli("a", "log", str(build["id"]), "--follow", name="follow")
    follower.wait_for_output("line 3\n", timeout=30)
    # Live: the follower printed line 3 while the build was still running on b (it waits
    # for the gate), and it goes on printing what b's slave writes after.
    assert next(b for b in f.builds("a") if b["id"] == build["id"])["finished_at"] is None
    assert "line 4" not in follower.output()
    (tmp_path / "gate").touch()
    follower.wait_for_output("line 8\n", timeout=30)
    assert follower.popen.wait(30) == 0
    out = follower.output()
    lines = [ln for ln in out.splitlines() if ln.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, 13)]
    assert "second step" in out


def test_bbx_build_through_master_a_shows_a_build_that_runs_on_master_b(farm, tmp_path):
    f = farm()
    f.start_master("a")
    f.start_master("b")
    f.start_slave("s2", ["b"])
    proc = f.cli("a", "build", "onb", name="build")
    proc.wait_for_output("line 3\n", timeout=30)
    assert proc.popen.poll() is None, "shown while it runs"
    (tmp_path / "gate").touch()
    assert proc.popen.wait(30) == 0, proc.output()
    out = proc.output()
    assert "started on slave s2" in out
    assert [ln for ln in out.splitlines() if ln.startswith("line ")] == \
        [f"line {i}" for i in range(1, 13)]
    assert "second step" in out
    assert "SUCCESS" in out.upper()


FAILOVER = """
[[builders]]
name = "long"
slaves = ["s1", "s2"]
[[builders.steps]]
name = "work"
command = "echo started-marker; until [ -e {gate} ]; do sleep 0.05; done; echo finished-marker"
"""
# The test farm's heartbeat_timeout: short, so the test is quick; the bound is the same rule.
DEADLINE = 6.0


def test_sigkill_of_master_b_mid_build_is_noticed_in_time_and_the_build_runs_again(farm,
                                                                                  pg_url,
                                                                                  tmp_path):
    f = farm(FAILOVER, heartbeat_timeout=DEADLINE)
    f.start_master("a")
    f.start_master("b")
    f.start_slave("s2", ["b", "a"])
    # An operator waits on the build through a; it runs on b (a has no slave yet).
    watcher = f.cli("a", "build", "long", name="watch")
    request = wait_until(lambda: next((b["request_id"] for b in f.builds("a")), None), 30,
                         what="the build to start")

    def running_on_b():
        rows = _rows(pg_url, "SELECT b.id, b.master FROM builds b JOIN steps s ON "
                     "s.build_id = b.id JOIN logs l ON l.step_id = s.id WHERE b.request_id = %s "
                     "AND position('started-marker' in convert_from(l.data, 'UTF8')) > 0",
                     (request,))
        return rows[0] if rows else None
    first, master = wait_until(running_on_b, 30, what="the build to run on b")
    assert master == "b"
    f.start_slave("s1", ["a"])  # the slave that stays attached
    killed = time.monotonic()
    f.kill_master("b")
    # Straight from the database, so the CLI's own start-up is not counted.
    wait_until(lambda: _rows(pg_url, "SELECT state FROM masters WHERE name = 'b'") == [("dead",)],
               DEADLINE + 10, interval=0.05, what="master a to declare b dead")
    noticed = time.monotonic() - killed
    assert noticed <= DEADLINE + 1.0, f"noticed after {noticed:.1f} s"
    build = next(b for b in f.builds("a") if b["id"] == first)
    assert (build["state"], build["result_name"]) == ("interrupted", "retry")
    assert "master b stopped heartbeating" in build["interrupted_reason"]
    (tmp_path / "gate").touch()  # the run that follows may finish

    def rerun():
        builds = [b for b in f.builds("a") if b["request_id"] == request and b["id"] != first]
        return builds[0] if builds and builds[0]["finished_at"] else None
    again = wait_until(rerun, 40, interval=0.2, what="the request to run again")
    assert (again["master"], again["result_name"]) == ("a", "success")
    assert again["slave"] in ("s1", "s2")
    # B's slave failed over to A and attached there.
    wait_until(lambda: "s2" in f.attached("a"), 20, what="s2 attached to a")
    slaves = {s["name"]: s for s in f.json("a", "slaves")}
    assert slaves["s2"]["master"] == "a"
    masters = {m["name"]: m for m in f.json("a", "masters")}
    assert masters["b"]["state"] == "dead"
    assert masters["a"]["state"] == "active" and masters["a"]["this"]
    assert _rows(pg_url, "SELECT COUNT(*) FROM builds WHERE request_id = %s", (request,)) == [(2,)]
    # The operator watching through a saw the RETRY, then the run that followed, live.
    assert watcher.popen.wait(30) == 0, watcher.output()
    out = watcher.output()
    assert "RETRY" in out and "queued again" in out
    lines = out.splitlines()
    assert lines.count("started-marker") == 2 and "finished-marker" in lines


def test_cancels_reach_the_master_that_holds_the_build_or_the_request(farm):
    f = farm()
    f.start_master("a")
    f.start_master("b")
    # No slave for onb yet: a request waits in the shared queue, watched by a bbx build on a.
    waiting = f.cli("a", "build", "onb", name="waiting")
    waiting.wait_for_output("queued", timeout=30)
    queued = f.json("b", "builds")["queued"]
    assert [r["builder"] for r in queued] == ["onb"], "every master sees the shared queue"
    removed = f.bbx("b", "cancel", "--request", str(queued[0]["id"]))
    assert removed.returncode == 0, removed.stderr
    assert waiting.popen.wait(30) == 1
    assert "CANCELLED" in waiting.output().upper()
    # A build running on b (its step waits for the gate forever), cancelled through a.
    f.start_slave("s2", ["b"])
    answer = json.loads(f.bbx("a", "build", "onb", "--no-wait", "--json").stdout)
    build = wait_until(lambda: next((b for b in f.builds("a")
                                     if b["request_id"] == answer["request_id"]), None), 30,
                       what="the build to start on b")
    cancelled = f.bbx("a", "cancel", str(build["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    done = wait_until(lambda: next((b for b in f.builds("a") if b["id"] == build["id"]
                                    and b["finished_at"]), None), 30, what="the cancel")
    assert (done["master"], done["result_name"]) == ("b", "cancelled")
