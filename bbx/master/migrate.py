"""`bbx master migrate-store`: copy a SQLite history into an empty PostgreSQL store, every byte.

It runs in the CLI's own process, with the master stopped, and without a reactor: one
read-only pass over the SQLite file, COPY into PostgreSQL in one transaction (all or
nothing), then the ids' sequences moved past the copied rows and every log byte read back
from both sides and compared (SHA-256 in seq order). Rows keep their ids, so build numbers,
`bbx log 42` and request ids mean the same after the move.

A history written by an older bbx is copied as it is: columns it lacks get their defaults,
and builds and claims that name no master are given the name of the master being moved
(so that, once it runs on PostgreSQL, it closes its own unfinished builds as before).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .store_db import StoreError, one_line
from .store_location import redact
from .store_schema import SCHEMA_VERSION, TABLES

# Tables whose ids PostgreSQL generates, and the id column: after the copy each sequence
# must continue past the copied ids.
IDENTITY = {"requests": "id", "builds": "id", "steps": "id", "logs": "seq"}
# Rows per COPY progress line (the operator sees the copy move on a large history).
PROGRESS_ROWS = 20_000


@dataclass
class Report:
    """What was copied: rows per table, log bytes, and the digest both sides agree on."""

    rows: dict
    log_bytes: int
    digest: str


def migrate(sqlite_path: Path, url: str, master_name: str, progress=print) -> Report:
    """Copy the history at `sqlite_path` into the PostgreSQL store at `url` (created if
    empty). StoreError, in one line, when it cannot or must not be done; the target is then
    left as it was."""
    from .store_pg import PostgresDatabase, require_psycopg

    pg = require_psycopg()
    source = _open_source(sqlite_path)
    try:
        target = PostgresDatabase(url, 0, master_name)
        target.open()  # creates the schema in an empty database, or checks it
        try:
            _check_empty(target.conn, url)
            rows = _copy(source, target.conn, master_name, progress)
            target.conn.commit()
        except BaseException:
            if target.conn is not None and not target.conn.broken:
                target.conn.rollback()
            raise
        digest_source, size_source = _log_digest_sqlite(source)
        digest_target, size_target = _log_digest_pg(target.conn)
        target.close()
    except pg.Error as error:
        raise StoreError(f"store: copying into {redact(url)} failed: {one_line(error)}; "
                         "no history was kept there") from None
    finally:
        source.close()
    if (digest_source, size_source) != (digest_target, size_target):
        raise StoreError(f"store: the logs copied into {redact(url)} differ from {sqlite_path} "
                         f"({size_target} bytes vs {size_source}); do not use the copy")
    return Report(rows=rows, log_bytes=size_source, digest=digest_source)


def _open_source(path: Path):
    if not path.exists():
        raise StoreError(f"store: {path} does not exist; name the master directory whose "
                         "SQLite history to copy")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            conn.close()
            raise StoreError(f"store: {path} is not a bbx store (no meta table)")
        version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                      .fetchone()[0])
    except sqlite3.Error as error:
        raise StoreError(f"store: cannot read {path}: {error}") from None
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"store: {path} has schema version {version}, newer than this bbx "
                         f"understands ({SCHEMA_VERSION}); migrate it with the bbx that wrote it")
    return conn


def _check_empty(conn, url: str) -> None:
    for table in ("requests", "builds", "steps", "logs", "masters"):
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
            raise StoreError(f"store: {redact(url)} already holds a bbx history (table "
                             f"{table} has rows); migrate into an empty database")


def _columns_sqlite(conn, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _columns_pg(conn, table: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,))]


def _copy(source, target, master_name: str, progress) -> dict:
    copied = {}
    for table in TABLES:
        have = set(_columns_sqlite(source, table))
        if not have:
            continue  # an older history without this table
        fillable = {"builds": "master", "requests": "claimed_by_master"}.get(table)
        columns = [c for c in _columns_pg(target, table) if c in have or c == fillable]
        order = IDENTITY.get(table)
        selected = [c if c in have else f"NULL AS {c}" for c in columns]
        query = f"SELECT {', '.join(selected)} FROM {table}"
        if table == "meta":
            query += " WHERE key != 'schema_version'"  # the target keeps its own
        if order:
            query += f" ORDER BY {order}"
        fill = _fill_master(table, columns, master_name)
        count = 0
        with target.cursor() as cursor:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in source.execute(query):
                    copy.write_row(fill(row) if fill else row)
                    count += 1
                    if count % PROGRESS_ROWS == 0:
                        progress(f"  {table}: {count} rows...")
        copied[table] = count
    if "builder_numbers" not in copied:
        target.execute("INSERT INTO builder_numbers (builder, last) SELECT builder, MAX(number) "
                       "FROM builds GROUP BY builder")
    for table, column in IDENTITY.items():
        target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                       f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)")
    return copied


def _fill_master(table: str, columns: list[str], master_name: str):
    """A row rewriter naming `master_name` where an older history names no master."""
    column = {"builds": "master", "requests": "claimed_by_master"}.get(table)
    if column is None or column not in columns:
        return None
    index = columns.index(column)
    state = columns.index("state") if table == "requests" else None

    def fill(row):
        if row[index] is None and (state is None or row[state] == "claimed"):
            row = list(row)
            row[index] = master_name
        return row
    return fill


def _log_digest_sqlite(conn) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for (data,) in conn.execute("SELECT data FROM logs ORDER BY seq"):
        digest.update(data)
        size += len(data)
    return digest.hexdigest(), size


def _log_digest_pg(conn) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    # A server-side cursor: the logs are streamed, never held whole in memory.
    with conn.cursor(name="bbx_migrate_verify") as cursor:
        cursor.itersize = 64
        cursor.execute("SELECT data FROM logs ORDER BY seq")
        for (data,) in cursor:
            digest.update(data)
            size += len(data)
    conn.commit()
    return digest.hexdigest(), size
