"""The store's queries: each function takes the sqlite3 connection first and runs inside one
transaction on the store's writer thread (Database.transact, bbx/master/store_db.py).
"""

from __future__ import annotations

from typing import Any

from bbx.master import results

from .store_db import (REQUEST_QUEUED, STATE_RUNNING, NoSuchBuild, NoSuchRequest, NoSuchStep,
                       RequestNotQueued)

_BUILD_COLUMNS = """b.id, b.builder, b.number, b.slave, b.state, b.result, b.started_at,
    b.finished_at, b.request_id, r.reason, b.interrupted_reason"""


def _build_dict(row) -> dict[str, Any]:
    (id_, builder, number, slave, state, result, started, finished, request_id, reason,
     interrupted_reason) = row
    return {
        "id": id_, "builder": builder, "number": number, "slave": slave, "state": state,
        "result": result, "result_name": results.name(result) if state != STATE_RUNNING
        else "running",
        "started_at": started, "finished_at": finished,
        "duration": None if finished is None else max(0.0, finished - started),
        "request_id": request_id, "reason": reason or "", "interrupted_reason": interrupted_reason,
    }


def queue_request(conn, builder, reason, now):
    return conn.execute("INSERT INTO requests (builder, submitted_at, reason) VALUES (?, ?, ?)",
                        (builder, now, reason)).lastrowid


def pending_requests(conn, builder):
    query = ("SELECT id, builder, submitted_at, reason, retries FROM requests "
             "WHERE state = 'queued'")
    args: tuple = ()
    if builder is not None:
        query += " AND builder = ?"
        args = (builder,)
    return [dict(zip(("id", "builder", "submitted_at", "reason", "retries"), row))
            for row in conn.execute(query + " ORDER BY id", args)]


def _request_state(conn, request_id):
    row = conn.execute("SELECT state FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise NoSuchRequest(f"unknown build request {request_id}: no such request in the store")
    return row[0]


def start_build(conn, request_id, builder, slave, now):
    if request_id is not None:
        state = _request_state(conn, request_id)
        if state != REQUEST_QUEUED:
            raise RequestNotQueued(f"build request {request_id} is {state}, not queued; "
                                   "it cannot start another build")
    number = conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM builds WHERE builder = ?",
                          (builder,)).fetchone()[0]
    build_id = conn.execute(
        "INSERT INTO builds (request_id, builder, number, slave, started_at) "
        "VALUES (?, ?, ?, ?, ?)", (request_id, builder, number, slave, now)).lastrowid
    if request_id is not None:
        conn.execute("UPDATE requests SET state = 'claimed', claimed_by_build = ? WHERE id = ?",
                     (build_id, request_id))
    return build_id, number


def requeue_request(conn, request_id):
    _request_state(conn, request_id)
    conn.execute("UPDATE requests SET state = 'queued', claimed_by_build = NULL, "
                 "retries = retries + 1 WHERE id = ?", (request_id,))


def finish_request(conn, request_id):
    _request_state(conn, request_id)
    conn.execute("UPDATE requests SET state = 'done' WHERE id = ?", (request_id,))


def _check_build(conn, build_id):
    if conn.execute("SELECT 1 FROM builds WHERE id = ?", (build_id,)).fetchone() is None:
        raise NoSuchBuild(f"unknown build id {build_id}: no such build on this master; "
                          "`bbx builds` lists the recent ones")


def start_step(conn, build_id, number, name, now):
    _check_build(conn, build_id)
    return conn.execute("INSERT INTO steps (build_id, number, name, started_at) "
                        "VALUES (?, ?, ?, ?)", (build_id, number, name, now)).lastrowid


def finish_step(conn, step_id, result, rc, now):
    conn.execute("UPDATE steps SET finished_at = ?, result = ?, rc = ? WHERE id = ?",
                 (now, result, rc, step_id))


def finish_build(conn, build_id, result, state, reason, now):
    _check_build(conn, build_id)
    conn.execute("UPDATE builds SET finished_at = ?, result = ?, state = ?, "
                 "interrupted_reason = ? WHERE id = ?", (now, result, state, reason, build_id))


def mark_interrupted(conn, reason, requeue):
    result = results.RETRY if requeue else results.EXCEPTION
    cut = conn.execute("SELECT id, request_id, started_at FROM builds "
                       "WHERE finished_at IS NULL ORDER BY id").fetchall()
    for build_id, request_id, started in cut:
        last = conn.execute(
            "SELECT MAX(t) FROM (SELECT MAX(s.started_at) AS t FROM steps s WHERE s.build_id = ?"
            " UNION ALL SELECT MAX(l.received_at) FROM logs l JOIN steps s ON l.step_id = s.id"
            " WHERE s.build_id = ?)", (build_id, build_id)).fetchone()[0]
        ended = max(started, last or started)
        conn.execute("UPDATE steps SET finished_at = ?, result = ? "
                     "WHERE build_id = ? AND finished_at IS NULL", (ended, result, build_id))
        conn.execute("UPDATE builds SET finished_at = ?, result = ?, state = 'interrupted', "
                     "interrupted_reason = ? WHERE id = ?", (ended, result, reason, build_id))
        if request_id is not None:
            if requeue:
                conn.execute("UPDATE requests SET state = 'queued', claimed_by_build = NULL, "
                             "retries = retries + 1 WHERE id = ?", (request_id,))
            else:
                conn.execute("UPDATE requests SET state = 'done' WHERE id = ?", (request_id,))
    return [row[0] for row in cut]


def builds(conn, builder, limit):
    query = f"SELECT {_BUILD_COLUMNS} FROM builds b LEFT JOIN requests r ON r.id = b.request_id"
    args: list = []
    if builder is not None:
        query += " WHERE b.builder = ?"
        args.append(builder)
    query += " ORDER BY b.id DESC LIMIT ?"
    args.append(max(0, int(limit)))
    return [_build_dict(row) for row in conn.execute(query, args)]


def build(conn, build_id):
    row = conn.execute(f"SELECT {_BUILD_COLUMNS} FROM builds b LEFT JOIN requests r "
                       "ON r.id = b.request_id WHERE b.id = ?", (build_id,)).fetchone()
    if row is None:
        _check_build(conn, build_id)
    build = _build_dict(row)
    build["steps"] = [
        {"id": sid, "number": number, "name": name, "started_at": started,
         "finished_at": finished, "result": result,
         "result_name": results.name(result) if finished is not None else "running",
         "rc": rc, "log_bytes": log_bytes or 0}
        for sid, number, name, started, finished, result, rc, log_bytes in conn.execute(
            "SELECT s.id, s.number, s.name, s.started_at, s.finished_at, s.result, s.rc, "
            "(SELECT SUM(LENGTH(l.data)) FROM logs l WHERE l.step_id = s.id) "
            "FROM steps s WHERE s.build_id = ? ORDER BY s.number", (build_id,))]
    return build


def _find_step(conn, build_id, step):
    steps = conn.execute("SELECT id, number, name FROM steps WHERE build_id = ? ORDER BY number",
                         (build_id,)).fetchall()
    for sid, number, name in steps:
        if (isinstance(step, int) and number == step) or step in (name, str(number)):
            return sid
    known = ", ".join(f"{number} {name}" for _sid, number, name in steps) or "none yet"
    raise NoSuchStep(f"build {build_id} has no step {step!r}; its steps: {known}")


def log(conn, build_id, step, after_seq, max_bytes, with_step):
    _check_build(conn, build_id)
    query = ("SELECT l.seq, s.number, l.stream, l.data FROM logs l JOIN steps s "
             "ON l.step_id = s.id WHERE s.build_id = ? AND l.seq > ?")
    args: list = [build_id, after_seq if after_seq is not None else -1]
    if step is not None:
        query += " AND s.id = ?"
        args.append(_find_step(conn, build_id, step))
    rows = []
    total = 0
    for seq, number, stream, data in conn.execute(query + " ORDER BY l.seq", args):
        text = bytes(data).decode("utf-8", "replace")
        rows.append((seq, number, stream, text) if with_step else (seq, stream, text))
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    return rows


def set_size_limit(conn, max_bytes):
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    # SQLite's own ceiling for max_page_count; "no limit" is asking for it.
    pages = 0xFFFFFFFE if max_bytes is None else max(1, max_bytes // page_size)
    granted = conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0]
    return granted * page_size
