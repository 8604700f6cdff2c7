"""The SQLite engine of the store: one file, one master (the default, zero setup).

It opens a file only after checking it is a bbx store it may touch, migrates it (schema in
bbx/master/store_schema.py), and runs in WAL mode. One master owns the file: its writer
thread serialises everything, so no row locks are needed.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager

from .store_db import Database, Sql, StoreError
from .store_schema import SCHEMA_VERSION, script

_SQLITE_MAGIC = b"SQLite format 3\x00"


class SqliteSql(Sql):
    """Sql on a sqlite3 connection (placeholders are already `?`)."""

    engine = "sqlite"

    def __init__(self, conn, master, trace=None):
        super().__init__(master)
        self.conn = conn
        self.trace = trace

    def all(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        return self.conn.execute(query, args).fetchall()

    def one(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        return self.conn.execute(query, args).fetchone()

    def run(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        return self.conn.execute(query, args).rowcount

    def many(self, query, rows):
        if self.trace is not None:
            self.trace(query)
        self.conn.executemany(query, rows)

    def insert(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        cursor = self.conn.execute(query, args)
        return cursor.lastrowid if cursor.rowcount else None  # INSERT ... SELECT may add none


class SqliteDatabase(Database):
    """The sqlite3 side of the store. Runs only on the store's writer thread."""

    engine = "sqlite"
    shared = False
    errors = (sqlite3.Error,)

    def __init__(self, path: str, max_held_bytes: int, master: str = ""):
        super().__init__(path, max_held_bytes, master)
        self.path = path
        self.conn: sqlite3.Connection | None = None

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
                    "BEGIN IMMEDIATE;" + script(step, "sqlite")
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

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def _transaction(self, write):
        # IMMEDIATE for writes: the write lock is taken up front, no upgrade races.
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield SqliteSql(self.conn, self.master, self.trace)
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self):
        if self.conn is not None and self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write_log_rows(self, sql, rows, markers, builds):
        if markers:
            sql.many("INSERT INTO logs (step_id, stream, data, received_at) VALUES (?, ?, ?, ?)",
                     markers)
        sql.many("INSERT INTO logs (step_id, stream, data, received_at) VALUES (?, ?, ?, ?)",
                 rows)
