"""`bbx master migrate-store`: a SQLite history copied into a real PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import BBX, Proc, run_bbx

# A history with a 50 MB log, made by the real Store: text lines, a few bytes that are not
# UTF-8 (kept as the very bytes), every stream kind, two builds.
WRITE = r'''
import sys
from twisted.internet import defer, task
from bbx.master.store import Store

async def main(reactor, path):
    store = Store(path, reactor)
    await store.open()
    request = await store.queue_request("big", "for the move")
    build_id, _n = await store.start_build(request, "big", "s1")
    step = await store.start_step(build_id, 1, "write")
    line = "0123456789abcdefghijklmnopqrstuvwxyz" * 2 + "\n"
    piece = line * (64 * 1024 // len(line))
    sent = 0
    i = 0
    while sent < 50 * 1000 * 1000:
        text = piece if i % 50 else b"bin \xff\xfe\x00 caf\xe9\n".decode("utf-8", "surrogateescape")
        store.append_log(step, ("stdout", "stderr", "header", "log:test.log")[i % 4], text)
        sent += len(text)
        i += 1
        if i % 64 == 0:
            await store.written()
    await store.finish_step(step, 0, 0)
    await store.finish_build(build_id, 0)
    await store.finish_request(request)
    other, _n = await store.start_build(None, "big", "s1")
    s2 = await store.start_step(other, 1, "short")
    store.append_log(s2, "stdout", "short\n")
    await store.finish_step(s2, 2, 1)
    await store.finish_build(other, 2)
    await store.queue_request("big", "still queued")
    await store.close()
    print(build_id, other)

task.react(lambda r: defer.ensureDeferred(main(r, sys.argv[1])))
'''

TOML = """[master]
name = "m1"
listen = "tcp:0:interface=127.0.0.1"
db = "{db}"

[[slaves]]
name = "s1"
password = "pw"

[[builders]]
name = "big"
slaves = ["s1"]
[[builders.steps]]
command = "true"

[control]
users = [{{ name = "admin", password = "admin-pw" }}]
"""


def _logs_sqlite(path):
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT seq, step_id, stream, received_at, data FROM logs "
                            "ORDER BY seq").fetchall()
    finally:
        conn.close()


def _logs_pg(url):
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT seq, step_id, stream, received_at, data FROM logs "
                            "ORDER BY seq").fetchall()


def test_migrate_store_copies_a_50_mb_log_byte_for_byte_and_the_master_runs_on_it(tmp_path,
                                                                                   pg_url):
    master_dir = tmp_path / "m"
    master_dir.mkdir()
    db = master_dir / "bbx.sqlite"
    (master_dir / "master.toml").write_text(TOML.format(db="bbx.sqlite"))
    os.chmod(master_dir / "master.toml", 0o600)
    script = tmp_path / "write.py"
    script.write_text(WRITE)
    made = subprocess.run([sys.executable, script, db], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parent.parent)
    assert made.returncode == 0, made.stderr
    big_build, small_build = map(int, made.stdout.split())

    moved = run_bbx("master", "migrate-store", master_dir, "--to", pg_url, timeout=300)
    assert moved.returncode == 0, moved.stderr
    assert "identical on both sides" in moved.stdout

    before, after = _logs_sqlite(db), _logs_pg(pg_url)
    assert sum(len(r[4]) for r in before) >= 50 * 1000 * 1000
    assert [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in after] == before
    assert any(b"\xff\xfe\x00 caf\xe9" in bytes(r[4]) for r in after), "bytes that are not UTF-8"

    # Moved again: refused, in one line, and the copy is left alone.
    again = run_bbx("master", "migrate-store", master_dir, "--to", pg_url)
    assert again.returncode != 0
    assert "already holds a bbx history" in again.stderr and "\n" not in again.stderr.strip()

    # The master runs on the copy: same ids and numbers, and new rows continue after them.
    (master_dir / "master.toml").write_text(TOML.format(db=pg_url))
    master = Proc([BBX, "master", "start", master_dir], log_path=tmp_path / "master.out")
    try:
        master.wait_for_output("listening on", timeout=60)
        env = {"BBX_MASTER_DIR": str(master_dir)}
        listed = json.loads(run_bbx("builds", "--json", env=env).stdout)
        by_id = {b["id"]: b for b in listed["builds"]}
        assert (by_id[big_build]["number"], by_id[big_build]["result_name"]) == (1, "success")
        assert by_id[small_build]["result_name"] == "failure"
        assert [r["reason"] for r in listed["queued"]] == ["still queued"]
        shown = run_bbx("log", str(small_build), env=env)
        assert shown.returncode == 0 and "short" in shown.stdout
    finally:
        master.terminate()


def test_a_version_1_history_is_moved_and_its_unfinished_build_is_closed_by_its_master(
        tmp_path, pg_url):
    import sqlite3

    from bbx.master.store_schema import script

    master_dir = tmp_path / "m"
    master_dir.mkdir()
    (master_dir / "master.toml").write_text(TOML.format(db="bbx.sqlite"))
    os.chmod(master_dir / "master.toml", 0o600)
    conn = sqlite3.connect(master_dir / "bbx.sqlite")
    conn.executescript(
        script(0, "sqlite") + ";INSERT INTO meta VALUES ('schema_version', '1');"
        "INSERT INTO requests (builder, submitted_at, state, claimed_by_build) "
        "VALUES ('big', 1.0, 'claimed', 1);"
        "INSERT INTO builds (request_id, builder, number, slave, started_at) "
        "VALUES (1, 'big', 3, 's1', 1.0);"
        "INSERT INTO steps (build_id, number, name, started_at) VALUES (1, 1, 'write', 1.5);"
        "INSERT INTO logs (step_id, stream, received_at, data) VALUES (1, 'stdout', 2.0, "
        "X'68616c66207761790a');")
    conn.close()
    moved = run_bbx("master", "migrate-store", master_dir, "--to", pg_url, timeout=120)
    assert moved.returncode == 0, moved.stderr
    (master_dir / "master.toml").write_text(TOML.format(db=pg_url))
    master = Proc([BBX, "master", "start", master_dir], log_path=tmp_path / "master.out")
    try:
        master.wait_for_output("listening on", timeout=60)
        listed = json.loads(run_bbx("builds", "--json",
                                    env={"BBX_MASTER_DIR": str(master_dir)}).stdout)
        [build] = listed["builds"]
        assert (build["master"], build["state"], build["result_name"]) == \
            ("m1", "interrupted", "retry")
        assert build["finished_at"] == 2.0, "closed at the last thing heard of it"
        assert [(r["id"], r["retries"]) for r in listed["queued"]] == [(1, 1)]
    finally:
        master.terminate()
