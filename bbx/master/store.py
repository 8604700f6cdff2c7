"""The build-history store: one SQLite file holding requests, builds, steps and every log byte.

Two halves, one per thread:

- `Store` lives on the reactor thread. Its methods return Deferreds; `append_log` returns at
  once and only queues the text in memory.
- `_Database` owns the sqlite3 connection and runs only on the store's own one-thread pool.
  Every SQL statement of the master runs there, in the order the reactor asked for it, so log
  chunks, step boundaries and reads never overtake each other.

Log appends are batched: the queue is handed to the writer every FLUSH_INTERVAL seconds or as soon
as FLUSH_BYTES are queued, and the writer commits the whole batch in one transaction, merging
small consecutive chunks of one stream into rows of up to CHUNK_BYTES.

When a write fails (disk full, I/O error) the writer keeps the rows in memory, in order, retries
every RETRY_INTERVAL and the master goes on serving; past MAX_HELD_BYTES the oldest held rows are
dropped and a marker saying how much was lost takes their place in the log.
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from bbx.master import results

log = Logger(namespace="bbx.master.store")

# The file name inside the master's directory when master.toml does not name one.
DEFAULT_FILE = "bbx.sqlite"

# Batching. 50 ms bounds how stale `bbx log --follow` can be and how much a SIGKILL can take
# with it; 2 MiB keeps a fast build's batches large enough that the per-commit cost (~0.1 ms in
# WAL mode without fsync) is noise. Measured with bench/store_write.py.
FLUSH_INTERVAL = 0.05
FLUSH_BYTES = 2 * 1024 * 1024
# Rows of about this size: large enough that the per-row cost vanishes against the bytes,
# small enough that `bbx log --follow` pages and PB answers (640 KiB banana limit) stay small.
CHUNK_BYTES = 64 * 1024
# While writes fail, how often to try again, and how much log to hold in memory meanwhile.
RETRY_INTERVAL = 1.0
MAX_HELD_BYTES = 64 * 1024 * 1024

STREAMS = ("stdout", "stderr", "header")  # plus 'log:<name>' for a command's named logfiles

# Builds and requests.
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


class Store:
    """The master's build history in one SQLite file: requests, builds, steps, logs.

    Every method returns a Deferred except append_log, which queues and returns None. The
    caller must `yield open()` first and `yield close()` last (close also runs on reactor
    shutdown unless close_on_shutdown=False); Store makes its own writer thread and stops it.
    """

    def __init__(self, path, reactor, *, flush_interval: float = FLUSH_INTERVAL,
                 flush_bytes: int = FLUSH_BYTES, max_held_bytes: int = MAX_HELD_BYTES,
                 retry_interval: float = RETRY_INTERVAL, close_on_shutdown: bool = True):
        self._close_on_shutdown = close_on_shutdown
        self.path = os.path.abspath(os.fspath(path))
        self._reactor = reactor
        self._flush_interval = flush_interval
        self._flush_bytes = flush_bytes
        self._retry_interval = retry_interval
        self._db = _Database(self.path, max_held_bytes)
        self._pool: ThreadPool | None = None
        self._shutdown_trigger = None
        self._closing: defer.Deferred | None = None
        self._is_open = False
        # The log queue, reactor side.
        self._pending: list[tuple[int, str, str | bytes]] = []
        self._pending_bytes = 0
        self._appended = 0        # appends queued so far, ever
        self._settled = 0         # appends whose batch the writer has committed or is holding
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self._timer = None
        self._retry_timer = None
        self._in_flight = 0
        self._failing: str | None = None
        self._warned_closed = False

    # -- lifecycle -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def open(self):
        """Create or migrate the schema. Fires with the schema version; StoreError if the file
        is not a bbx store, is corrupt, or is newer than this bbx — the file is then untouched."""
        pool = ThreadPool(minthreads=1, maxthreads=1, name="bbx-store")
        pool.start()
        self._pool = pool
        try:
            info = yield deferToThreadPool(self._reactor, pool, self._db.open)
        except BaseException:
            self._pool = None
            yield deferToThreadPool(self._reactor, pool, self._db.close)
            pool.stop()
            raise
        self._is_open = True
        # "before": only before-shutdown triggers may return a Deferred the reactor waits for.
        # An owner that must write last words first (the master) closes the store itself.
        if self._close_on_shutdown:
            self._shutdown_trigger = self._reactor.addSystemEventTrigger(
                "before", "shutdown", self._reactor_stopping)
        if info["created"]:
            log.info("store: created {path} (schema version {version})",
                     path=self.path, version=info["version"])
        elif info["migrated_from"] != info["version"]:
            log.info("store: migrated {path} from schema version {old} to {version}",
                     path=self.path, old=info["migrated_from"], version=info["version"])
        return info["version"]

    def _reactor_stopping(self):
        self._shutdown_trigger = None  # it is firing: removing it now would warn
        return self.close()

    def close(self):
        """Commit everything queued, close the file and stop the writer thread. Idempotent."""
        if self._closing is None:
            self._closing = defer.ensureDeferred(self._close())
        return self._closing

    async def _close(self):
        if self._pool is None:
            return
        self._is_open = False  # from here on, appends are refused and no retry is scheduled
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._cancel_timers()
        try:
            await self.flush()
        except StoreError as error:
            log.error("store: closing with log data that could not be saved: {error}",
                      error=error)
        self._cancel_timers()
        pool, self._pool = self._pool, None
        await deferToThreadPool(self._reactor, pool, self._db.close)
        pool.stop()

    # -- log appends -----------------------------------------------------------------------

    def append_log(self, step_id: int, stream: str, text: str | bytes) -> None:
        """Queue `text` for the end of the step's log in `stream` ('stdout', 'stderr',
        'header' or 'log:<name>'). Returns None at once; appends keep their order."""
        if not self._is_open:
            if not self._warned_closed:
                self._warned_closed = True
                log.warn("store: log text for step {step} arrived after {path} was closed; "
                         "dropped", step=step_id, path=self.path)
            return
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"log text must be str or bytes, not {type(text).__name__}")
        if not text:
            return
        self._pending.append((step_id, stream, text))
        self._pending_bytes += len(text)
        self._appended += 1
        if self._failing is not None:
            return  # the retry timer takes the queue along
        if self._pending_bytes >= self._flush_bytes and self._in_flight == 0:
            self._submit_pending()
        elif self._timer is None:
            self._timer = self._reactor.callLater(self._flush_interval, self._timer_fired)

    def flush(self):
        """Hand every queued append to the writer now. Fires when they are committed;
        StoreError if the file cannot be written (the data stays held for retry)."""
        if self._pool is None:
            return defer.succeed(None)
        d = self._submit_pending(force=True)
        return d.addCallback(self._raise_if_failed)

    def written(self):
        """Fires once every append queued so far has been committed — or, while the disk is
        full, is held by the writer for retry. Meant for a caller that acknowledges data only
        once it is safe (RemoteCommand answering a slave's update call).

        Group commit: if the writer is idle the queue goes now; if it is busy, the queue goes
        the moment it is free, so waiting callers share one transaction. While writes fail,
        waiters are settled by the next retry (at most RETRY_INTERVAL): that slows the slave,
        which bounds the memory held."""
        target = self._appended
        if self._settled >= target:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((target, d))
        if self._in_flight == 0 and self._failing is None:
            self._submit_pending()
        return d

    @property
    def queued_bytes(self) -> int:
        """Characters of log text queued on the reactor side, not yet handed to the writer."""
        return self._pending_bytes

    def _timer_fired(self):
        self._timer = None
        if self._in_flight == 0 and self._failing is None:
            self._submit_pending()
        # else: _batch_done hands the queue over when the writer is free again

    def _submit_pending(self, force=False):
        """Hand the queue to the writer as one batch. At most one batch is in flight unless
        forced (flush, or an operation that must come after the queued text)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._pending and not force and not self._db.held_bytes:
            return defer.succeed({"ok": True})
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        target = self._appended
        self._in_flight += 1
        d = deferToThreadPool(self._reactor, self._pool, self._db.append, batch,
                              self._reactor.seconds())
        d.addCallbacks(self._batch_done, self._batch_crashed, callbackArgs=(target,),
                       errbackArgs=(target,))
        return d

    def _batch_done(self, status, target):
        self._in_flight -= 1
        self._settled = max(self._settled, target)
        ready = [d for t, d in self._waiters if t <= self._settled]
        self._waiters = [(t, d) for t, d in self._waiters if t > self._settled]
        if status["dropped"]:
            log.error("store: could not write to {path} for too long; dropped the oldest "
                      "{dropped} bytes of log held in memory (a marker in the log says where)",
                      path=self.path, dropped=status["dropped"])
        if not status["ok"]:
            if self._failing != status["error"]:
                self._failing = status["error"]
                log.error("store: cannot write to {path}: {error}; log data for {what} is being "
                          "held in memory ({held} bytes) and retried every {every:g} s",
                          path=self.path, error=status["error"], what=status["what"],
                          held=status["held"], every=self._retry_interval)
            if self._retry_timer is None and self._is_open:
                self._retry_timer = self._reactor.callLater(self._retry_interval, self._retry)
        elif self._failing is not None:
            self._failing = None
            log.info("store: writing to {path} again; the log data held in memory is saved",
                     path=self.path)
        if self._pending and self._in_flight == 0 and self._failing is None:
            if self._waiters or self._pending_bytes >= self._flush_bytes:
                self._submit_pending()
            elif self._timer is None:
                self._timer = self._reactor.callLater(self._flush_interval, self._timer_fired)
        for d in ready:
            d.callback(None)
        return status

    def _batch_crashed(self, failure, target):
        # A bug, not a full disk (_Database.append reports those): say so, keep the queue moving.
        log.failure("store: writing a log batch to {path} failed", failure, path=self.path)
        return self._batch_done({"ok": False, "error": failure.getErrorMessage(), "held": 0,
                                 "dropped": 0, "what": "this batch"}, target)

    def _retry(self):
        self._retry_timer = None
        if self._pool is not None and self._in_flight == 0:
            self._submit_pending(force=True)

    def _raise_if_failed(self, status):
        if not status["ok"]:
            raise StoreError(f"store: cannot write to {self.path}: {status['error']}; "
                             f"{status['held']} bytes of log are held in memory for retry")
        return None

    def _cancel_timers(self):
        for name in ("_timer", "_retry_timer"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    # -- everything else runs on the writer thread, after the log text queued before it ------

    def _call(self, fn: Callable, *args, write: bool = True):
        if not self._is_open:
            return defer.fail(StoreError(f"store: {self.path} is not open"))
        self._submit_pending(force=False)
        d = deferToThreadPool(self._reactor, self._pool, self._db.transact, fn, args, write)
        d.addErrback(self._sqlite_failed, "write to" if write else "read")
        return d

    def _sqlite_failed(self, failure, doing):
        failure.trap(sqlite3.Error)
        line = f"store: cannot {doing} {self.path}: {failure.value}"
        log.error("{line}", line=line)
        raise StoreError(line)

    def queue_request(self, builder: str, reason: str = ""):
        """Queue a build request. Fires with its id."""
        return self._call(_sql_queue_request, builder, reason, self._reactor.seconds())

    def pending_requests(self, builder: str | None = None):
        """Fires with the queued requests (oldest first) as dicts: id, builder, submitted_at,
        reason, retries."""
        return self._call(_sql_pending_requests, builder, write=False)

    def start_build(self, request_id: int | None, builder: str, slave: str):
        """Start a build of `builder` on `slave`, claiming request `request_id` (None for a
        build nobody queued). Fires with (build_id, number); `number` counts per builder from
        1. NoSuchRequest / RequestNotQueued if the request cannot be claimed."""
        return self._call(_sql_start_build, request_id, builder, slave, self._reactor.seconds())

    def requeue_request(self, request_id: int):
        """Put a claimed request back in the queue (its build was cut short); retries += 1."""
        return self._call(_sql_requeue_request, request_id)

    def finish_request(self, request_id: int):
        """Mark a request done: no build will be started for it again."""
        return self._call(_sql_finish_request, request_id)

    def start_step(self, build_id: int, number: int, name: str):
        """Record that step `number` (`name`) of a build started. Fires with the step id."""
        return self._call(_sql_start_step, build_id, number, name, self._reactor.seconds())

    def finish_step(self, step_id: int, result: int, rc: int | None = None):
        """Record a step's result (bbx.master.results) and its command's rc; comes after every
        log append made before it."""
        return self._call(_sql_finish_step, step_id, result, rc, self._reactor.seconds())

    def finish_build(self, build_id: int, result: int, state: str = STATE_FINISHED,
                     reason: str | None = None):
        """Record a build's result; state 'finished' or 'interrupted' (with `reason`)."""
        return self._call(_sql_finish_build, build_id, result, state, reason,
                          self._reactor.seconds())

    def mark_interrupted(self, reason: str, requeue: bool = True):
        """Close every build left unfinished (the master stopped under it), as Buildbot's
        master-deactivation housekeeping does. Fires with their ids.

        Each such build and its open steps get state 'interrupted', `reason`, and finished_at =
        the last time the master heard of the build (its last log chunk or step start). With
        `requeue`, their requests go back to the queue and the result is RETRY ("will be run
        again", Buildbot's choice); without, the result is EXCEPTION.
        """
        return self._call(_sql_mark_interrupted, reason, requeue)

    def builds(self, builder: str | None = None, limit: int = 20):
        """Fires with the most recent builds, newest first, as dicts: id, builder, number,
        slave, state, result, result_name, started_at, finished_at, duration, request_id,
        reason, interrupted_reason."""
        return self._call(_sql_builds, builder, limit, write=False)

    def build(self, build_id: int):
        """Fires with one build (as in builds()) plus "steps": a list of dicts id, number,
        name, started_at, finished_at, result, result_name, rc, log_bytes. NoSuchBuild."""
        return self._call(_sql_build, build_id, write=False)

    def log(self, build_id: int, step: int | str | None = None, after_seq: int | None = None,
            max_bytes: int | None = None, with_step: bool = False):
        """Fires with the build's log — one step's if `step` (number or name) is given — as a
        list of (seq, stream, text) in the order received, from after `after_seq` on.

        seq grows with every chunk stored, across steps, so `--follow` polls with the last
        seq it saw. `max_bytes` stops after the row that reaches it (always at least one row),
        for paging large logs through PB. with_step: (seq, step_number, stream, text).
        NoSuchBuild / NoSuchStep."""
        return self._call(_sql_log, build_id, step, after_seq, max_bytes, with_step,
                          write=False)

    def set_size_limit(self, max_bytes: int | None):
        """Cap the file's size (SQLite's max_page_count); None lifts the cap. Past it, writes
        fail as on a full disk. Fires with the cap in bytes in force."""
        return self._call(_sql_set_size_limit, max_bytes, write=False)


class _Database:
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

    def _reactor_stopping(self):
        self._shutdown_trigger = None  # it is firing: removing it now would warn
        return self.close()

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


# -- SQL, each function run by _Database.transact on the writer thread ----------------------

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


def _sql_queue_request(conn, builder, reason, now):
    return conn.execute("INSERT INTO requests (builder, submitted_at, reason) VALUES (?, ?, ?)",
                        (builder, now, reason)).lastrowid


def _sql_pending_requests(conn, builder):
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


def _sql_start_build(conn, request_id, builder, slave, now):
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


def _sql_requeue_request(conn, request_id):
    _request_state(conn, request_id)
    conn.execute("UPDATE requests SET state = 'queued', claimed_by_build = NULL, "
                 "retries = retries + 1 WHERE id = ?", (request_id,))


def _sql_finish_request(conn, request_id):
    _request_state(conn, request_id)
    conn.execute("UPDATE requests SET state = 'done' WHERE id = ?", (request_id,))


def _check_build(conn, build_id):
    if conn.execute("SELECT 1 FROM builds WHERE id = ?", (build_id,)).fetchone() is None:
        raise NoSuchBuild(f"unknown build id {build_id}: no such build on this master; "
                          "`bbx builds` lists the recent ones")


def _sql_start_step(conn, build_id, number, name, now):
    _check_build(conn, build_id)
    return conn.execute("INSERT INTO steps (build_id, number, name, started_at) "
                        "VALUES (?, ?, ?, ?)", (build_id, number, name, now)).lastrowid


def _sql_finish_step(conn, step_id, result, rc, now):
    conn.execute("UPDATE steps SET finished_at = ?, result = ?, rc = ? WHERE id = ?",
                 (now, result, rc, step_id))


def _sql_finish_build(conn, build_id, result, state, reason, now):
    _check_build(conn, build_id)
    conn.execute("UPDATE builds SET finished_at = ?, result = ?, state = ?, "
                 "interrupted_reason = ? WHERE id = ?", (now, result, state, reason, build_id))


def _sql_mark_interrupted(conn, reason, requeue):
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


def _sql_builds(conn, builder, limit):
    query = f"SELECT {_BUILD_COLUMNS} FROM builds b LEFT JOIN requests r ON r.id = b.request_id"
    args: list = []
    if builder is not None:
        query += " WHERE b.builder = ?"
        args.append(builder)
    query += " ORDER BY b.id DESC LIMIT ?"
    args.append(max(0, int(limit)))
    return [_build_dict(row) for row in conn.execute(query, args)]


def _sql_build(conn, build_id):
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


def _sql_log(conn, build_id, step, after_seq, max_bytes, with_step):
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


def _sql_set_size_limit(conn, max_bytes):
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    # SQLite's own ceiling for max_page_count; "no limit" is asking for it.
    pages = 0xFFFFFFFE if max_bytes is None else max(1, max_bytes // page_size)
    granted = conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0]
    return granted * page_size
