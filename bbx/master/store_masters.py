"""The queries of several masters on one store: registration, heartbeats, the reaping of a
dead master, and which master each slave is attached to. Each function takes an Sql first
and runs in one transaction on the store's writer thread (as bbx/master/store_queries.py).
"""

from __future__ import annotations

from .store_queries import mark_interrupted

_MASTER_COLUMNS = ("name", "state", "started_at", "heartbeat_at", "beat", "host", "pid",
                   "endpoint", "stopped_reason")


def register(sql, incarnation, now, host, pid, endpoint):
    """Take (or take back) this master's row: active, a new incarnation, beat 0. Its old
    attachments are forgotten: a master that starts has no slave yet."""
    sql.write("INSERT INTO masters (name, incarnation, state, started_at, heartbeat_at, beat, host, "
            "pid, endpoint, stopped_reason) VALUES (?, ?, 'active', ?, ?, 0, ?, ?, ?, NULL) "
            "ON CONFLICT (name) DO UPDATE SET incarnation = excluded.incarnation, "
            "state = 'active', started_at = excluded.started_at, "
            "heartbeat_at = excluded.heartbeat_at, beat = masters.beat + 1, "
            "host = excluded.host, pid = excluded.pid, endpoint = excluded.endpoint, "
            "stopped_reason = NULL",
            (sql.master, incarnation, now, now, host, pid, endpoint))
    sql.write("DELETE FROM slave_attachments WHERE master = ?", (sql.master,))
    sql.event("master", sql.master)


def heartbeat(sql, incarnation, now, attached, detached):
    """Beat once and record attachment changes; return (still ours, every master's row).

    `attached` is [(slave, attached_at)] that attached since the last beat, `detached` the
    slave names that left. "Still ours" is False when another master declared this one dead
    or another process took the name.
    """
    ours = sql.run("UPDATE masters SET beat = beat + 1, heartbeat_at = ? WHERE name = ? AND "
                   "incarnation = ? AND state = 'active'", (now, sql.master, incarnation)) == 1
    if ours:
        for slave in detached:
            sql.write("DELETE FROM slave_attachments WHERE slave = ? AND master = ?",
                    (slave, sql.master))
        if attached:
            sql.many("INSERT INTO slave_attachments (slave, master, attached_at) VALUES (?, ?, ?) "
                     "ON CONFLICT (slave) DO UPDATE SET master = excluded.master, "
                     "attached_at = excluded.attached_at",
                     [(slave, sql.master, at) for slave, at in attached])
    return ours, masters(sql)


def masters(sql):
    """Every master's row, as dicts, by name."""
    return [dict(zip(_MASTER_COLUMNS, row)) for row in sql.all(
        "SELECT name, state, started_at, heartbeat_at, beat, host, pid, endpoint, "
        "stopped_reason FROM masters ORDER BY name")]


def stopped(sql, incarnation, reason):
    """This master stops cleanly: its row says so and its attachments go."""
    sql.write("UPDATE masters SET state = 'stopped', stopped_reason = ? WHERE name = ? AND "
            "incarnation = ?", (reason, sql.master, incarnation))
    sql.write("DELETE FROM slave_attachments WHERE master = ?", (sql.master,))
    sql.event("master", sql.master)


def reap(sql, name, beat, reason):
    """Declare master `name` dead — if it is still active and its beat is still `beat`
    (another master may have reaped it first, or it came back): its running builds are
    interrupted (RETRY) and their requests queued again, its claims given back, its
    attachments forgotten. Returns the ids of the builds cut, or None if nothing was done."""
    row = sql.one("SELECT state, beat FROM masters WHERE name = ?" + sql.for_update, (name,))
    if row is None or row[0] != "active" or row[1] != beat:
        return None
    sql.write("UPDATE masters SET state = 'dead', stopped_reason = ? WHERE name = ?",
            (reason, name))
    cut = mark_interrupted(sql, reason, True, name)
    sql.write("DELETE FROM slave_attachments WHERE master = ?", (name,))
    sql.event("master", name)
    return cut


def attachments(sql):
    """{slave: (master, attached_at)} for the slaves some master recorded as attached."""
    return {slave: (master, at) for slave, master, at in sql.all(
        "SELECT a.slave, a.master, a.attached_at FROM slave_attachments a JOIN masters m "
        "ON m.name = a.master WHERE m.state = 'active'")}
