"""The build-history store: requests, builds, steps and every log byte, in SQLite or PostgreSQL.

Two halves, one per thread:

- `Store` lives on the reactor thread. Its methods return Deferreds; `append_log` returns at
  once and only queues the text in memory.
- A `Database` owns the connection and runs only on the store's own one-thread pool:
  bbx/master/store_sqlite.py (the default: one file, one master) or bbx/master/store_pg.py
  (one PostgreSQL database shared by several masters), both on bbx/master/store_db.py. Every
  SQL statement of the master runs there, in the order the reactor asked for it, so log
  chunks, step boundaries and reads never overtake each other. The statements themselves are
  in bbx/master/store_queries.py, written once for both engines.

Every commit's events (a request queued, a build started, new log rows) are fired on
`store.events` (bbx/master/events.py) once committed; on PostgreSQL the other masters' events
arrive there too, through LISTEN/NOTIFY (bbx/master/store_listen.py).

Log appends are batched: the queue is handed to the writer every FLUSH_INTERVAL seconds or as soon
as FLUSH_BYTES are queued, and the writer commits the whole batch in one transaction, merging
small consecutive chunks of one stream into rows of up to CHUNK_BYTES.

When a write fails (disk full, I/O error, the database server gone) the writer keeps the rows in
memory, in order, retries every RETRY_INTERVAL and the master goes on serving; past
MAX_HELD_BYTES the oldest held rows are dropped and a marker saying how much was lost takes
their place in the log.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from . import metrics, store_location
from .events import EventHub
from .store_ops import StoreOperations
from .store_db import (CHUNK_BYTES, REQUEST_CLAIMED, REQUEST_DONE, REQUEST_QUEUED,
                       SCHEMA_VERSION, STATE_FINISHED, STATE_INTERRUPTED, STATE_RUNNING,
                       NoSuchBuild, NoSuchRequest, NoSuchStep, RequestNotQueued, StoreError)

# Callers import the store's errors, states and schema version from here, wherever they live.
__all__ = ["Store", "StoreError", "NoSuchBuild", "NoSuchStep", "NoSuchRequest", "RequestNotQueued",
           "SCHEMA_VERSION", "CHUNK_BYTES", "FLUSH_INTERVAL", "FLUSH_BYTES", "RETRY_INTERVAL",
           "MAX_HELD_BYTES", "STATE_RUNNING", "STATE_FINISHED", "STATE_INTERRUPTED",
           "REQUEST_QUEUED", "REQUEST_CLAIMED", "REQUEST_DONE"]

log = Logger(namespace="bbx.master.store")

# Batching. 50 ms bounds how stale `bbx log --follow` can be and how much a SIGKILL can take
# with it; 2 MiB keeps a fast build's batches large enough that the per-commit cost (~0.1 ms in
# WAL mode without fsync) is noise. Measured with bench/store_write.py.
FLUSH_INTERVAL = 0.05
FLUSH_BYTES = 2 * 1024 * 1024
# While writes fail, how often to try again, and how much log to hold in memory meanwhile.
RETRY_INTERVAL = 1.0
MAX_HELD_BYTES = 64 * 1024 * 1024


class Store(StoreOperations):
    """The master's build history: requests, builds, steps, logs.

    `db` is where it lives: a StoreLocation, a `db` setting ("bbx.sqlite", "sqlite:PATH",
    "postgresql://...") or a path. `master` is this master's name, recorded with the builds
    it runs and the requests it claims (and the sender of its events).

    Every method returns a Deferred except append_log, which queues and returns None. The
    caller must `yield open()` first and `yield close()` last (close also runs on reactor
    shutdown unless close_on_shutdown=False); Store makes its own writer thread and stops it.
    """

    def __init__(self, db, reactor, *, master: str = "", flush_interval: float = FLUSH_INTERVAL,
                 flush_bytes: int = FLUSH_BYTES, max_held_bytes: int = MAX_HELD_BYTES,
                 retry_interval: float = RETRY_INTERVAL, close_on_shutdown: bool = True):
        self._close_on_shutdown = close_on_shutdown
        self.location = store_location.parse(db)
        self.master = master
        self.shared = self.location.shared
        self.path = self.location.display()  # what messages name (no password)
        self._reactor = reactor
        self._flush_interval = flush_interval
        self._flush_bytes = flush_bytes
        self._retry_interval = retry_interval
        if self.shared:
            from .store_pg import PostgresDatabase  # psycopg only for a PostgreSQL store

            self._db = PostgresDatabase(self.location.url, max_held_bytes, master)
        else:
            from .store_sqlite import SqliteDatabase

            self._db = SqliteDatabase(str(self.location.path), max_held_bytes, master)
        self.events = EventHub()
        self._listener = None
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
        self._step_builds: dict[int, int] = {}  # step id -> build id, for log events

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
        if self.shared:
            from .store_listen import EventListener

            listener = EventListener(self.location.url, self._reactor, self.events, self.master)
            try:
                yield listener.start()
            except BaseException:
                self._pool = None
                yield deferToThreadPool(self._reactor, pool, self._db.close)
                pool.stop()
                raise
            self._listener = listener
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
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.stop()
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
        builds = sorted({self._step_builds[step] for step, _s, _t in batch
                         if step in self._step_builds})
        d = deferToThreadPool(self._reactor, self._pool, self._db.append, batch,
                              self._reactor.seconds(), builds)
        metrics.STORE_WRITE.time(d, self._reactor)
        if builds:
            d.addCallback(self._logs_committed, builds)
        d.addCallbacks(self._batch_done, self._batch_crashed, callbackArgs=(target,),
                       errbackArgs=(target,))
        return d

    def _logs_committed(self, status, builds):
        if status["ok"]:
            for build_id in builds:
                self.events.fire("log", self.master, build_id)
        return status

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
        # A bug, not a full disk (Database.append reports those): say so, keep the queue moving.
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
        d.addCallbacks(self._committed, self._engine_failed,
                       errbackArgs=("write to" if write else "read",))
        return d

    def run_query(self, fn: Callable, *args, write: bool = True):
        """Run fn(sql, *args) (an Sql of bbx/master/store_db.py) in one transaction on the
        writer thread, after the log text queued before; fires with its result. For modules
        with queries of their own (bbx/master/masters.py)."""
        return self._call(fn, *args, write=write)

    def _committed(self, answer):
        result, events = answer
        for kind, *args in events:
            self.events.fire(kind, self.master, *args)
        return result

    def _engine_failed(self, failure, doing):
        failure.trap(*self._db.errors)
        from .store_db import one_line

        line = f"store: cannot {doing} {self.path}: {one_line(failure.value)}"
        log.error("{line}", line=line)
        raise StoreError(line)
