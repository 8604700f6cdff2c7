"""The PostgreSQL engine of the store: one database shared by several masters.

Imported only when `db` is a PostgreSQL URL: psycopg is an optional dependency
(`pip install 'bbx[postgres]'`), and a SQLite master never loads it.

Why psycopg 3 and a thin layer of our own rather than SQLAlchemy Core + Alembic: the store has
two dozen statements and a handful of migrations, which one `?`→`%s` translation and a type
table (bbx/master/store_schema.py) serve on both engines. Measured on this machine (200 MB of
64 KiB rows, batches of 32): both insert at the same rate, within noise (100–170 MB/s), but
SQLAlchemy + Alembic add 48 MB to the master's RSS against psycopg's 24 MB.

Every connection has deadlines (connect, statements, TCP keepalive). A connection that breaks
is replaced before the next transaction; while it is down, log batches are held in memory
exactly as on a full disk (bbx/master/store_db.py).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

from .store_db import EVENT_CHANNEL, Database, Sql, StoreError, event_payload, one_line
from .store_location import redact
from .store_schema import SCHEMA_VERSION, script

try:
    import psycopg
except ImportError:  # pragma: no cover - reported when a PostgreSQL store is opened
    psycopg = None

# Seconds: how long a connect may take, and the most one statement may run before the server
# cancels it. A claim, a heartbeat and a 2 MiB log batch take milliseconds; a minute means
# the server is in trouble, and the caller hears it instead of hanging.
CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT_MS = 60_000
# TCP keepalive towards the server, so a vanished database host is noticed in ~25 s even
# while the connection is idle (libpq's keepalives_* parameters; unix sockets ignore them).
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
             "keepalives_count": 3}
# Advisory-lock key space of bbx (the first int4 of pg_advisory_lock(int4, int4)): 0x62627800
# spells "bbx\0". The second int4 is 0 for schema migrations, hashtext(name) for a master.
LOCK_SPACE = 0x62627800
MIGRATION_LOCK = 0


def require_psycopg():
    if psycopg is None:
        raise StoreError("store: db is a PostgreSQL URL but psycopg is not installed; "
                         "install it with: pip install 'bbx[postgres]'")
    return psycopg


def connect(url: str, *, autocommit: bool = False, role: str = "writer", master: str = ""):
    """A psycopg connection to `url` with bbx's deadlines, named in pg_stat_activity as
    "bbx <role> <master>". StoreError, in one line, if it fails."""
    pg = require_psycopg()
    name = f"bbx {role} {master}".strip()[:63]  # NAMEDATALEN - 1
    try:
        conn = pg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT,
                          application_name=name, **KEEPALIVE)
    except pg.Error as error:
        raise StoreError(f"store: cannot connect to {redact(url)}: {one_line(error)}; check "
                         "the URL, that the server runs and that it accepts this user") from None
    except Exception as error:  # a malformed URL raises ProgrammingError / ValueError
        raise StoreError(f"store: cannot connect to {redact(url)}: {error}; check the URL") \
            from None
    try:
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        if "synchronous_commit" not in url:
            # The same bargain as the SQLite store's WAL + synchronous=NORMAL: a commit is in
            # the server's memory when COMMIT returns, so a killed *master* loses nothing it
            # committed; only a crash of the database host can lose its last ~0.6 s of
            # commits (never corrupting anything). Waiting for the WAL flush made a trivial
            # build 3x slower here. A URL that sets synchronous_commit itself (options=-c...)
            # keeps its choice.
            conn.execute("SET synchronous_commit = off")
        if not autocommit:
            conn.commit()
    except pg.Error as error:
        conn.close()
        raise StoreError(f"store: cannot use {redact(url)}: {one_line(error)}") from None
    return conn


@functools.lru_cache(maxsize=256)
def _pg(query: str) -> str:
    # Our SQL has no literal '?' or '%': placeholders translate one for one.
    return query.replace("?", "%s")


class PgSql(Sql):
    """Sql on a psycopg connection in pipeline mode: `?` becomes `%s`; a `write` is sent on
    without waiting for its answer (the next read, or the commit, collects it), so a
    transaction costs about one round trip per statement whose result it needs; new ids come
    from RETURNING; row locks are real; events are NOTIFYed in one statement at commit."""

    engine = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn, master, trace=None, pipeline=None):
        super().__init__(master)
        self.conn = conn
        self.trace = trace
        self.pipeline = pipeline

    def all(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        return self.conn.execute(_pg(query), args).fetchall()

    def one(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        return self.conn.execute(_pg(query), args).fetchone()

    def run(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        cursor = self.conn.execute(_pg(query), args)
        if self.pipeline is not None:
            self.pipeline.sync()  # the row count is only known once the answer is in
        return cursor.rowcount

    def write(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        self.conn.execute(_pg(query), args)

    def many(self, query, rows):
        if self.trace is not None:
            self.trace(query)
        with self.conn.cursor() as cursor:
            cursor.executemany(_pg(query), rows)

    def insert(self, query, args=()):
        if self.trace is not None:
            self.trace(query)
        row = self.conn.execute(_pg(query) + " RETURNING id", args).fetchone()
        return row[0] if row is not None else None  # INSERT ... SELECT may add none

    def send_events(self):
        """NOTIFY every event of this transaction, in one statement (sent at commit)."""
        if self.events:
            self.conn.execute("SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) "
                              "WITH ORDINALITY AS e(payload, n) ORDER BY n",
                              (EVENT_CHANNEL, [event_payload(kind, self.master, args)
                                               for kind, *args in self.events]))


class PostgresDatabase(Database):
    """The psycopg side of the store. Runs only on the store's writer thread."""

    engine = "postgresql"
    shared = True

    def __init__(self, url: str, max_held_bytes: int, master: str = ""):
        super().__init__(redact(url), max_held_bytes, master)
        self.url = url
        self.conn = None
        # Without psycopg, open() says how to install it (one line, through the master's start).
        self.errors = (psycopg.Error,) if psycopg is not None else ()

    # -- open: check before touching anything, then migrate -------------------------------

    def open(self) -> dict:
        conn = self.conn = connect(self.url, master=self.master)
        try:
            # Two masters starting at once on an empty database: one migrates, the other
            # waits for it here and then finds the schema current.
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, MIGRATION_LOCK))
            version = self._check_contents(conn)
            for step in range(version, SCHEMA_VERSION):
                conn.execute(script(step, "postgresql"))
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                             (str(step + 1),))
            if version == 0:
                self._compress_logs_with_lz4(conn)
            conn.commit()
        except StoreError:
            conn.rollback()
            raise
        except psycopg.Error as error:
            self._rollback()
            raise StoreError(f"store: cannot set up {self.where}: {one_line(error)}; check "
                             "that the user may create tables in that database") from None
        return {"version": SCHEMA_VERSION, "created": version == 0, "migrated_from": version}

    @staticmethod
    def _compress_logs_with_lz4(conn) -> None:
        """Log rows are TOASTed; PostgreSQL's default pglz compression made the server the
        bottleneck (58–75 MB/s stored here, bench/store_write.py), lz4 does 230–290 MB/s and
        still compresses. A server built without lz4 (or older than 14) keeps pglz."""
        conn.execute("SAVEPOINT bbx_lz4")
        try:
            conn.execute("ALTER TABLE logs ALTER COLUMN data SET COMPRESSION lz4")
        except psycopg.Error:
            conn.execute("ROLLBACK TO SAVEPOINT bbx_lz4")
        else:
            conn.execute("RELEASE SAVEPOINT bbx_lz4")

    def _check_contents(self, conn) -> int:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        if not tables:
            return 0
        if "meta" not in tables:
            raise StoreError(f"store: {self.where} is a PostgreSQL database but not a bbx store "
                             "(no meta table); it was left untouched — create an empty "
                             "database for bbx and name it in master.toml")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"store: {self.where} has a bad schema_version "
                             f"{row and row[0]!r}; it was left untouched — restore it from a "
                             "backup") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"store: {self.where} has schema version {version}, newer than "
                             f"this bbx understands ({SCHEMA_VERSION}); it was left untouched "
                             "— run the newer bbx that wrote it on every master")
        return version

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    # -- transactions ---------------------------------------------------------------------

    def _connection(self):
        """The connection, replaced first if the server or the network dropped it."""
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            self.close()
            try:
                self.conn = connect(self.url, master=self.master)
            except StoreError as error:
                raise psycopg.OperationalError(str(error)) from None
        return self.conn

    def transact(self, fn, args, write):
        try:
            return super().transact(fn, args, write)
        except psycopg.OperationalError:
            # The connection broke (server restarted, a network blip): a read is asked again
            # once, on a new connection. A write is not: its commit may have reached the
            # server; the caller hears StoreError and decides (a build start is held and
            # tried again; log batches are kept and retried).
            if write or self.conn is not None:
                raise
            return super().transact(fn, args, write)

    @contextmanager
    def _transaction(self, write):
        # psycopg opens the transaction with the first statement; the pipeline sends
        # statements without waiting, and the commit collects every answer.
        conn = self._connection()
        try:
            with conn.pipeline() as pipeline:
                sql = PgSql(conn, self.master, self.trace, pipeline)
                yield sql
                sql.send_events()
                conn.commit()
        except BaseException:
            self._rollback()
            raise

    def _rollback(self):
        conn = self.conn
        if conn is None:
            return
        if conn.broken or conn.closed:
            self.close()
            return
        try:
            conn.rollback()
        except psycopg.Error:
            self.close()

    def _write_log_rows(self, sql, rows, markers, builds):
        query = "INSERT INTO logs (step_id, stream, data, received_at) VALUES (?, ?, ?, ?)"
        if markers:
            sql.many(query, markers)
        sql.many(query, rows)
        for build_id in builds:
            sql.event("log", build_id)
