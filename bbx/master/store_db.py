"""The writer-thread half of the store: the sqlite3 connection, the schema and the log batches.

`Database` runs only on the Store's own one-thread pool (bbx/master/store.py), so every SQL
statement of the master runs there, in the order the reactor asked for it. It opens a file only
after checking it is a bbx store it may touch, migrates it, commits log batches — holding them
in memory while writes fail — and runs the query functions of bbx/master/store_queries.py, each
in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections import deque

# Rows of about this size: large enough that the per-row cost vanishes against the bytes,
# small enough that `bbx log --follow` pages and PB answers (640 KiB banana limit) stay small.
CHUNK_BYTES = 64 * 1024

# The values of builds.state and requests.state.
STATE_RUNNING, STATE_FINISHED, STATE_INTERRUPTED = "running", "finished", "interrupted"
REQUEST_QUEUED, REQUEST_CLAIMED, REQUEST_DONE = "queued", "claimed", "done"

# Ordered migrations: MIGRATIONS[i] brings a file from schema version i to i + 1. Append new
# scripts; never edit a released one. Each runs in one transaction with its version bump.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        builder TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'claimed', 'done')),
        claimed_by_build INTEGER,
        retries INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX requests_by_state ON requests (state, builder, id);
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        request_id INTEGER REFERENCES requests (id),
        builder TEXT NOT NULL,
        number INTEGER NOT NULL,
        slave TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        result INTEGER,
        state TEXT NOT NULL DEFAULT 'running',
        interrupted_reason TEXT,
        UNIQUE (builder, number)
    );
    CREATE INDEX builds_unfinished ON builds (finished_at) WHERE finished_at IS NULL;
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        build_id INTEGER NOT NULL REFERENCES builds (id),
        number INTEGER NOT NULL,
        name TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        result INTEGER,
        rc INTEGER,
        UNIQUE (build_id, number)
    );
    -- Append-only: seq is the rowid, so rows land at the end of the table b-tree, and one
    -- number orders a step's chunks and also serves as the whole build's --follow cursor.
    CREATE TABLE logs (
        seq INTEGER PRIMARY KEY,
        step_id INTEGER NOT NULL,
        stream TEXT NOT NULL,
        received_at REAL NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX logs_by_step ON logs (step_id, seq);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(Exception):
    """Something the operator must hear about the store. str(error) is one line with the fix."""


class NoSuchBuild(StoreError):
    """No build with that id in the store."""


class NoSuchStep(StoreError):
    """The build has no step with that number or name."""


class NoSuchRequest(StoreError):
    """No build request with that id."""


class RequestNotQueued(StoreError):
    """The request was already claimed by a build, or is done."""


class Database:
    """The sqlite3 side of the store. Runs only on the store's writer thread."""

    def __init__(self, path: str, max_held_bytes: int):
        self.path = path
        self.max_held_bytes = max_held_bytes
        self.conn: sqlite3.Connection | None = None
        # Rows (step_id, stream, data, received_at) that a failed commit left to retry, in order.
        self.held: deque = deque()
        self.held_bytes = 0
        self.dropped: dict[int, int] = {}  # step_id -> bytes dropped, marker not yet written

    # -- open: check before touching anything, then migrate -------------------------------

    def open(self) -> dict:
        self._check_header()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so batches are exactly
            # one transaction each. The pool has one thread; the check is off only because
            # ThreadPool does not promise it is always the same OS thread.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(f"store: cannot open {self.path}: {error}; check the path and its "
                             "permissions") from None
        self.conn = conn
        try:
            version = self._check_contents(conn)
        except sqlite3.DatabaseError as error:
            raise self._corrupt(error) from None
        created = version == 0
        try:
            if created:
                # Only a fresh file: page_size cannot change once the file has content.
                conn.execute("PRAGMA page_size = 16384")
            # WAL + synchronous=NORMAL: a commit is in the WAL file (in the OS page cache) when
            # COMMIT returns, so a killed master process (SIGKILL, crash) loses nothing that was
            # committed — the next open replays the WAL. Only an OS crash or power loss can lose
            # the last commits, and it never corrupts the file. FULL would fsync every batch.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"store: {self.path} cannot use write-ahead logging (journal "
                                 f"mode stays {mode!r}); put it on a local filesystem")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -16384")  # KiB: 16 MiB of page cache
            for step in range(version, SCHEMA_VERSION):
                conn.executescript(
                    "BEGIN IMMEDIATE;" + MIGRATIONS[step]
                    + f";INSERT OR REPLACE INTO meta (key, value) "
                      f"VALUES ('schema_version', '{step + 1}');COMMIT;")
        except sqlite3.Error as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"store: cannot set up {self.path}: {error}; check free disk space "
                             "and permissions, then restart") from None
        return {"version": SCHEMA_VERSION, "created": created, "migrated_from": version}

    def _check_header(self):
        """Refuse, before SQLite opens it, a file that is not a SQLite database at all."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as error:
            raise StoreError(f"store: cannot read {self.path}: {error.strerror}; check the "
                             "path and its permissions") from None
        if head and head != _SQLITE_MAGIC:
            raise StoreError(f"store: {self.path} is not a SQLite database; it was left "
                             "untouched — move it aside or set another store path in "
                             "master.toml")

    def _check_contents(self, conn) -> int:
        """The file's schema version (0 = empty file); StoreError if we must not touch it."""
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return 0
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise self._corrupt(problems[0])
        if "meta" not in tables:
            raise StoreError(f"store: {self.path} is a SQLite database but not a bbx store "
                             f"(no meta table); it was left untouched — set another store "
                             "path in master.toml")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise self._corrupt(f"bad schema_version {row and row[0]!r}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"store: {self.path} has schema version {version}, newer than "
                             f"this bbx understands ({SCHEMA_VERSION}); it was left untouched "
                             "— run the newer bbx that wrote it, or set another store path")
        return version

    def _corrupt(self, detail) -> StoreError:
        return StoreError(f"store: {self.path} is corrupt ({detail}); it was left untouched — "
                          "restore it from a backup or move it aside to start a new history")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- log batches ----------------------------------------------------------------------

    def append(self, batch, now) -> dict:
        """Commit a batch of (step_id, stream, text) appends, behind any rows held from
        earlier failures. Never raises for a write failure: reports it and holds the rows."""
        for row in _merge(batch, now):
            self.held.append(row)
            self.held_bytes += len(row[2])
        status = {"ok": True, "error": None, "held": 0, "dropped": 0, "what": ""}
        if not self.held and not self.dropped:
            return status
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self.dropped:
                conn.executemany(
                    "INSERT INTO logs (step_id, stream, received_at, data) VALUES (?, ?, ?, ?)",
                    [(step, "header", now, _lost_marker(n)) for step, n in self.dropped.items()])
            conn.executemany(
                "INSERT INTO logs (step_id, stream, data, received_at) VALUES (?, ?, ?, ?)",
                self.held)
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            status.update(ok=False, error=str(error), dropped=self._drop_oldest())
            status.update(held=self.held_bytes, what=self._describe_held())
            return status
        self.held.clear()
        self.held_bytes = 0
        self.dropped.clear()
        return status

    def _drop_oldest(self) -> int:
        dropped = 0
        while self.held_bytes > self.max_held_bytes and self.held:
            step, _stream, data, _at = self.held.popleft()
            self.held_bytes -= len(data)
            self.dropped[step] = self.dropped.get(step, 0) + len(data)
            dropped += len(data)
        return dropped

    def _describe_held(self) -> str:
        steps = sorted({row[0] for row in self.held} | set(self.dropped))
        try:
            marks = ",".join("?" * len(steps))
            builds = [row[0] for row in self.conn.execute(
                f"SELECT DISTINCT build_id FROM steps WHERE id IN ({marks}) ORDER BY build_id",
                steps)]
        except sqlite3.Error:
            builds = []
        if builds:
            return ("build " if len(builds) == 1 else "builds ") + ", ".join(map(str, builds))
        return "step " + ", ".join(map(str, steps))

    # -- everything else ------------------------------------------------------------------

    def transact(self, fn, args, write):
        """Run fn(conn, *args) in one transaction (IMMEDIATE for writes: no upgrade races)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return result


def _merge(batch, now):
    """(step, stream, text) appends → rows (step, stream, utf-8 bytes, now), consecutive
    appends to the same step and stream joined into rows of up to CHUNK_BYTES."""
    rows = []
    parts: list = []
    key = None
    size = 0

    def emit():
        if isinstance(parts[0], bytes):
            data = b"".join(p if isinstance(p, bytes) else _encode(p) for p in parts)
        else:
            data = _encode("".join(p if isinstance(p, str) else p.decode("utf-8", "replace")
                                   for p in parts))
        rows.append((key[0], key[1], data, now))

    for step, stream, text in batch:
        if (step, stream) != key or size + len(text) > CHUNK_BYTES:
            if parts:
                emit()
            parts, key, size = [], (step, stream), 0
        parts.append(text)
        size += len(text)
    if parts:
        emit()
    return rows


def _encode(text: str) -> bytes:
    # surrogateescape: bytes a slave could not decode come back as the very bytes it read.
    return text.encode("utf-8", "surrogateescape")


def _lost_marker(nbytes: int) -> bytes:
    return (f"\n[bbx: {nbytes} bytes of log were lost here: the store could not be written "
            "for too long]\n").encode()
