"""The store's queries: each function takes an `Sql` first (bbx/master/store_db.py) and runs
inside one transaction on the store's writer thread, on SQLite or PostgreSQL alike.

Events a function raises (`sql.event`) reach the rest of the master after the commit, and
the other masters of a shared store through NOTIFY: ("request", id, state, builder) when a
request is queued, claimed, requeued or done (state is its new state, None when unknown);
("build", id, request_id) when a build or one of its steps starts or ends; ("cancel",
build_id, who) to ask a build's master to cancel it.
"""

from __future__ import annotations

from typing import Any

from bbx.master import results

from .store_db import (REQUEST_CLAIMED, REQUEST_DONE, REQUEST_QUEUED, STATE_RUNNING, NoSuchBuild,
                       NoSuchRequest, NoSuchStep, RequestNotQueued)

_BUILD_COLUMNS = """b.id, b.builder, b.number, b.slave, b.state, b.result, b.started_at,
    b.finished_at, b.request_id, r.reason, b.interrupted_reason, b.master"""
# Log rows fetched per statement while reading a log: 64 rows of up to CHUNK_BYTES is 4 MiB.
LOG_ROWS_PER_READ = 64
_REQUEST_COLUMNS = ("id", "builder", "submitted_at", "reason", "retries")


def _build_dict(row) -> dict[str, Any]:
    (id_, builder, number, slave, state, result, started, finished, request_id, reason,
     interrupted_reason, master) = row
    return {
        "id": id_, "builder": builder, "number": number, "slave": slave, "state": state,
        "result": result, "result_name": results.name(result) if state != STATE_RUNNING
        else "running",
        "started_at": started, "finished_at": finished,
        "duration": None if finished is None else max(0.0, finished - started),
        "request_id": request_id, "reason": reason or "", "interrupted_reason": interrupted_reason,
        "master": master,
    }


# -- requests --------------------------------------------------------------------------------

def request_state(sql, request_id):
    """A request and the newest build serving it: {"request_id", "builder", "state",
    "build_id" (None before it started)}; None for an unknown request."""
    row = sql.one("SELECT builder, state FROM requests WHERE id = ?", (request_id,))
    if row is None:
        return None
    build = sql.one("SELECT MAX(id) FROM builds WHERE request_id = ?", (request_id,))
    return {"request_id": request_id, "builder": row[0], "state": row[1],
            "build_id": build[0] if build else None}


def queue_request(sql, builder, reason, now):
    request_id = sql.insert("INSERT INTO requests (builder, submitted_at, reason) "
                            "VALUES (?, ?, ?)", (builder, now, reason))
    sql.event("request", request_id, REQUEST_QUEUED, builder)
    return request_id


def queue_and_claim(sql, builder, reason, now, claim):
    """Queue a request and, when `claim` (this master has an idle slave for the builder),
    claim the builder's oldest queued request in the same transaction — usually this very
    one. Returns {"id", "claimed": request dict or None, "position": int or None}."""
    request_id = sql.insert("INSERT INTO requests (builder, submitted_at, reason) "
                            "VALUES (?, ?, ?)", (builder, now, reason))
    claimed = _claim(sql, (builder,), now) if claim else None
    position = None
    if claimed is None or claimed["id"] != request_id:
        sql.event("request", request_id, REQUEST_QUEUED, builder)
        position = sql.one("SELECT COUNT(*) FROM requests WHERE state = 'queued' AND id <= ?",
                           (request_id,))[0]
    return {"id": request_id, "claimed": claimed, "position": position}


def pending_requests(sql, builder):
    query = ("SELECT id, builder, submitted_at, reason, retries FROM requests "
             "WHERE state = 'queued'")
    args: tuple = ()
    if builder is not None:
        query += " AND builder = ?"
        args = (builder,)
    return [dict(zip(_REQUEST_COLUMNS, row)) for row in sql.all(query + " ORDER BY id", args)]


def request_position(sql, request_id):
    """1 for the oldest queued request, None when it is not queued."""
    row = sql.one("SELECT state FROM requests WHERE id = ?", (request_id,))
    if row is None or row[0] != REQUEST_QUEUED:
        return None
    return sql.one("SELECT COUNT(*) FROM requests WHERE state = 'queued' AND id <= ?",
                   (request_id,))[0]


def claim_request(sql, builders, now):
    """Claim the oldest queued request of one of `builders` for this master, skipping rows
    another master is claiming right now. Fires with the request dict, or None."""
    return _claim(sql, builders, now)


def _claim(sql, builders, now):
    if not builders:
        return None
    marks = ",".join("?" * len(builders))
    row = sql.one(f"SELECT id, builder, submitted_at, reason, retries FROM requests "
                  f"WHERE state = 'queued' AND builder IN ({marks}) ORDER BY id LIMIT 1"
                  + sql.skip_locked, tuple(builders))
    if row is None:
        return None
    sql.write("UPDATE requests SET state = 'claimed', claimed_by_master = ?, claimed_at = ?, "
              "claimed_by_build = NULL WHERE id = ?", (sql.master, now, row[0]))
    sql.event("request", row[0], REQUEST_CLAIMED, row[1])
    return dict(zip(_REQUEST_COLUMNS, row))


def unclaim_request(sql, request_id):
    """Give back a claim no build came of (the slave failed its ping): queued again, as it
    was, for any master."""
    n = sql.run("UPDATE requests SET state = 'queued', claimed_by_master = NULL, "
                "claimed_at = NULL WHERE id = ? AND state = 'claimed' AND claimed_by_build IS NULL "
                "AND claimed_by_master = ?", (request_id, sql.master))
    if n:
        sql.event("request", request_id, REQUEST_QUEUED, None)
    return bool(n)


def _request_state(sql, request_id, lock=False):
    row = sql.one("SELECT state, claimed_by_master, claimed_by_build FROM requests WHERE id = ?"
                  + (sql.for_update if lock else ""), (request_id,))
    if row is None:
        raise NoSuchRequest(f"unknown build request {request_id}: no such request in the store")
    return row


def start_build(sql, request_id, builder, slave, now):
    if request_id is not None:
        state, by_master, by_build = _request_state(sql, request_id, lock=True)
        mine = state == REQUEST_CLAIMED and by_build is None and by_master == sql.master
        if state != REQUEST_QUEUED and not mine:
            raise RequestNotQueued(f"build request {request_id} is {state}, not queued; "
                                   "it cannot start another build")
    # The upsert holds the builder's row until commit: numbers never collide across masters.
    sql.write("INSERT INTO builder_numbers (builder, last) VALUES (?, 1) "
            "ON CONFLICT (builder) DO UPDATE SET last = builder_numbers.last + 1", (builder,))
    number = sql.one("SELECT last FROM builder_numbers WHERE builder = ?", (builder,))[0]
    build_id = sql.insert(
        "INSERT INTO builds (request_id, builder, number, slave, started_at, master) "
        "VALUES (?, ?, ?, ?, ?, ?)", (request_id, builder, number, slave, now, sql.master))
    if request_id is not None:
        sql.write("UPDATE requests SET state = 'claimed', claimed_by_build = ?, "
                "claimed_by_master = ? WHERE id = ?", (build_id, sql.master, request_id))
    sql.event("build", build_id, request_id)
    return build_id, number


def start_build_and_step(sql, request_id, builder, slave, step_name, now):
    build_id, number = start_build(sql, request_id, builder, slave, now)
    return build_id, number, start_step(sql, build_id, 1, step_name, now)


def requeue_request(sql, request_id):
    _request_state(sql, request_id)
    sql.write("UPDATE requests SET state = 'queued', claimed_by_build = NULL, "
            "claimed_by_master = NULL, retries = retries + 1 WHERE id = ?", (request_id,))
    sql.event("request", request_id, REQUEST_QUEUED, None)


def finish_request(sql, request_id):
    sql.write("UPDATE requests SET state = 'done' WHERE id = ?", (request_id,))
    sql.event("request", request_id, REQUEST_DONE, None)


def cancel_queued_request(sql, request_id):
    """Take a queued request off the queue; False if it is not queued (anymore)."""
    n = sql.run("UPDATE requests SET state = 'done' WHERE id = ? AND state = 'queued'",
                (request_id,))
    if n:
        sql.event("request", request_id, REQUEST_DONE, None)
        sql.event("cancelled", request_id)
    return bool(n)


def request(sql, request_id):
    """One request as a dict (id, builder, state, claimed_by_build, claimed_by_master,
    retries), or None."""
    row = sql.one("SELECT id, builder, state, claimed_by_build, claimed_by_master, retries "
                  "FROM requests WHERE id = ?", (request_id,))
    if row is None:
        return None
    return dict(zip(("id", "builder", "state", "claimed_by_build", "claimed_by_master",
                     "retries"), row))


# -- builds and steps ------------------------------------------------------------------------

def _check_build(sql, build_id):
    row = sql.one("SELECT request_id FROM builds WHERE id = ?", (build_id,))
    if row is None:
        raise NoSuchBuild(f"unknown build id {build_id}: no such build on this master; "
                          "`bbx builds` lists the recent ones")
    return row[0]


# The statements of a running build are few and their answers mostly unneeded: on PostgreSQL
# each answer waited for is a round trip, so these check nothing they need not.

def start_step(sql, build_id, number, name, now):
    # INSERT ... SELECT: the build's existence is checked by the insert itself.
    step_id = sql.insert("INSERT INTO steps (build_id, number, name, started_at) "
                         "SELECT id, ?, ?, ? FROM builds WHERE id = ?",
                         (number, name, now, build_id))
    if step_id is None:
        _check_build(sql, build_id)  # raises NoSuchBuild, in its words
    sql.event("build", build_id, None)
    return step_id


def finish_step(sql, step_id, result, rc, now, build_id=None):
    """`build_id`, when the caller knows it, spares a lookup for the event."""
    if build_id is None:
        row = sql.one("SELECT build_id FROM steps WHERE id = ?", (step_id,))
        build_id = row[0] if row is not None else None
    sql.write("UPDATE steps SET finished_at = ?, result = ?, rc = ? WHERE id = ?",
              (now, result, rc, step_id))
    if build_id is not None:
        sql.event("build", build_id, None)


def finish_build(sql, build_id, result, state, reason, now):
    """Close a running build. An unknown id, or a build another master already closed (it
    declared this one dead), is left as it is."""
    sql.write("UPDATE builds SET finished_at = ?, result = ?, state = ?, "
              "interrupted_reason = ? WHERE id = ? AND finished_at IS NULL",
              (now, result, state, reason, build_id))
    sql.event("build", build_id, None)


def end_build(sql, build_id, result, state, reason, now, request_id, requeue):
    """finish_build, then the build's request done — or queued again with `requeue` — in the
    same transaction: one commit at the end of every build instead of two. An unknown
    request changes nothing (the build is still closed)."""
    finish_build(sql, build_id, result, state, reason, now)
    if request_id is None:
        return
    if not requeue:
        finish_request(sql, request_id)
    elif sql.one("SELECT id FROM requests WHERE id = ?", (request_id,)) is not None:
        requeue_request(sql, request_id)


def mark_interrupted(sql, reason, requeue, master=None):
    """Close every unfinished build (of `master`, or of any master when None); see
    Store.mark_interrupted. Returns their ids."""
    result = results.RETRY if requeue else results.EXCEPTION
    query = "SELECT id, request_id, started_at FROM builds WHERE finished_at IS NULL"
    args: tuple = ()
    if master is not None:
        query += " AND master = ?"
        args = (master,)
    cut = sql.all(query + " ORDER BY id" + sql.for_update, args)
    for build_id, request_id, started in cut:
        last = sql.one(
            "SELECT MAX(t) FROM (SELECT MAX(s.started_at) AS t FROM steps s WHERE s.build_id = ?"
            " UNION ALL SELECT MAX(l.received_at) FROM logs l JOIN steps s ON l.step_id = s.id"
            " WHERE s.build_id = ?) AS times", (build_id, build_id))[0]
        ended = max(started, last or started)
        sql.write("UPDATE steps SET finished_at = ?, result = ? "
                "WHERE build_id = ? AND finished_at IS NULL", (ended, result, build_id))
        sql.write("UPDATE builds SET finished_at = ?, result = ?, state = 'interrupted', "
                "interrupted_reason = ? WHERE id = ?", (ended, result, reason, build_id))
        if request_id is not None:
            if requeue:
                sql.write("UPDATE requests SET state = 'queued', claimed_by_build = NULL, "
                        "claimed_by_master = NULL, retries = retries + 1 WHERE id = ?",
                        (request_id,))
            else:
                sql.write("UPDATE requests SET state = 'done' WHERE id = ?", (request_id,))
            sql.event("request", request_id, REQUEST_QUEUED if requeue else REQUEST_DONE, None)
        sql.event("build", build_id, request_id)
    if master is not None:
        # Claims the master held without a build yet (it was pinging the slave).
        for (request_id,) in sql.all("SELECT id FROM requests WHERE state = 'claimed' AND "
                                     "claimed_by_build IS NULL AND claimed_by_master = ?",
                                     (master,)):
            sql.write("UPDATE requests SET state = 'queued', claimed_by_master = NULL, "
                    "claimed_at = NULL WHERE id = ?", (request_id,))
            sql.event("request", request_id, REQUEST_QUEUED, None)
    return [row[0] for row in cut]


def builds(sql, builder, limit):
    query = f"SELECT {_BUILD_COLUMNS} FROM builds b LEFT JOIN requests r ON r.id = b.request_id"
    args: list = []
    if builder is not None:
        query += " WHERE b.builder = ?"
        args.append(builder)
    query += " ORDER BY b.id DESC LIMIT ?"
    args.append(max(0, int(limit)))
    return [_build_dict(row) for row in sql.all(query, args)]


def build(sql, build_id):
    row = sql.one(f"SELECT {_BUILD_COLUMNS} FROM builds b LEFT JOIN requests r "
                  "ON r.id = b.request_id WHERE b.id = ?", (build_id,))
    if row is None:
        _check_build(sql, build_id)
    build = _build_dict(row)
    build["steps"] = [
        {"id": sid, "number": number, "name": name, "started_at": started,
         "finished_at": finished, "result": result,
         "result_name": results.name(result) if finished is not None else "running",
         "rc": rc, "log_bytes": log_bytes or 0}
        for sid, number, name, started, finished, result, rc, log_bytes in sql.all(
            "SELECT s.id, s.number, s.name, s.started_at, s.finished_at, s.result, s.rc, "
            "(SELECT SUM(LENGTH(l.data)) FROM logs l WHERE l.step_id = s.id) "
            "FROM steps s WHERE s.build_id = ? ORDER BY s.number", (build_id,))]
    return build


def build_brief(sql, build_id):
    """What a follower needs between log pages: the build's state and its steps, without
    summing their log sizes. None for an unknown build."""
    row = sql.one(f"SELECT {_BUILD_COLUMNS} FROM builds b LEFT JOIN requests r "
                  "ON r.id = b.request_id WHERE b.id = ?", (build_id,))
    if row is None:
        return None
    brief = _build_dict(row)
    brief["steps"] = [
        {"id": sid, "number": number, "name": name, "finished_at": finished, "result": result,
         "result_name": results.name(result) if finished is not None else "running",
         "rc": rc, "started_at": started, "duration": None if finished is None
         else max(0.0, finished - started)}
        for sid, number, name, started, finished, result, rc in sql.all(
            "SELECT id, number, name, started_at, finished_at, result, rc FROM steps "
            "WHERE build_id = ? ORDER BY number", (build_id,))]
    return brief


def request_cancel(sql, build_id, who):
    """Ask the master running `build_id` to cancel it. Returns that master's name, or None
    when the build is not running."""
    row = sql.one("SELECT master, finished_at FROM builds WHERE id = ?", (build_id,))
    if row is None:
        _check_build(sql, build_id)
    master, finished = row
    if finished is not None:
        return None
    sql.event("cancel", build_id, who)
    return master or ""


def _find_step(sql, build_id, step):
    steps = sql.all("SELECT id, number, name FROM steps WHERE build_id = ? ORDER BY number",
                    (build_id,))
    for sid, number, name in steps:
        if (isinstance(step, int) and number == step) or step in (name, str(number)):
            return sid
    known = ", ".join(f"{number} {name}" for _sid, number, name in steps) or "none yet"
    raise NoSuchStep(f"build {build_id} has no step {step!r}; its steps: {known}")


def log(sql, build_id, step, after_seq, max_bytes, with_step):
    _check_build(sql, build_id)
    query = ("SELECT l.seq, s.number, l.stream, l.data FROM logs l JOIN steps s "
             "ON l.step_id = s.id WHERE s.build_id = ? AND l.seq > ?")
    extra: list = []
    if step is not None:
        query += " AND s.id = ?"
        extra.append(_find_step(sql, build_id, step))
    query += f" ORDER BY l.seq LIMIT {LOG_ROWS_PER_READ}"
    rows = []
    total = 0
    after = after_seq if after_seq is not None else -1
    while True:
        # In pages: a 200 MB log must not be fetched whole to answer for its first 256 KiB.
        page = sql.all(query, [build_id, after, *extra])
        for seq, number, stream, data in page:
            text = bytes(data).decode("utf-8", "replace")
            rows.append((seq, number, stream, text) if with_step else (seq, stream, text))
            total += len(data)
            if max_bytes is not None and total >= max_bytes:
                return rows
        if len(page) < LOG_ROWS_PER_READ:
            return rows
        after = page[-1][0]


def set_size_limit(sql, max_bytes):
    page_size = sql.one("PRAGMA page_size")[0]
    # SQLite's own ceiling for max_page_count; "no limit" is asking for it.
    pages = 0xFFFFFFFE if max_bytes is None else max(1, max_bytes // page_size)
    granted = sql.one(f"PRAGMA max_page_count = {int(pages)}")[0]
    return granted * page_size
