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

from . import store_location
from . import store_queries as sql
from .events import EventHub
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


class Store:
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

    def queue_request(self, builder: str, reason: str = ""):
        """Queue a build request. Fires with its id."""
        return self._call(sql.queue_request, builder, reason, self._reactor.seconds())

    def pending_requests(self, builder: str | None = None):
        """Fires with the queued requests (oldest first) as dicts: id, builder, submitted_at,
        reason, retries."""
        return self._call(sql.pending_requests, builder, write=False)

    def start_build(self, request_id: int | None, builder: str, slave: str):
        """Start a build of `builder` on `slave`, claiming request `request_id` (None for a
        build nobody queued). Fires with (build_id, number); `number` counts per builder from
        1. NoSuchRequest / RequestNotQueued if the request cannot be claimed."""
        return self._call(sql.start_build, request_id, builder, slave, self._reactor.seconds())

    def requeue_request(self, request_id: int):
        """Put a claimed request back in the queue (its build was cut short); retries += 1."""
        return self._call(sql.requeue_request, request_id)

    def finish_request(self, request_id: int):
        """Mark a request done: no build will be started for it again."""
        return self._call(sql.finish_request, request_id)

    def start_step(self, build_id: int, number: int, name: str):
        """Record that step `number` (`name`) of a build started. Fires with the step id."""
        d = self._call(sql.start_step, build_id, number, name, self._reactor.seconds())

        def remember(step_id):
            self._step_builds[step_id] = build_id
            return step_id
        return d.addCallback(remember)

    def finish_step(self, step_id: int, result: int, rc: int | None = None):
        """Record a step's result (bbx.master.results) and its command's rc; comes after every
        log append made before it."""
        return self._call(sql.finish_step, step_id, result, rc, self._reactor.seconds())

    def finish_build(self, build_id: int, result: int, state: str = STATE_FINISHED,
                     reason: str | None = None):
        """Record a build's result; state 'finished' or 'interrupted' (with `reason`). A build
        already closed (by another master that declared this one dead) keeps its result."""
        self._forget_steps({build_id})
        return self._call(sql.finish_build, build_id, result, state, reason,
                          self._reactor.seconds())

    def _forget_steps(self, builds) -> None:
        for step in [s for s, b in self._step_builds.items() if b in builds]:
            del self._step_builds[step]

    def mark_interrupted(self, reason: str, requeue: bool = True, master: str | None = None):
        """Close every build left unfinished (the master stopped under it), as Buildbot's
        master-deactivation housekeeping does. Fires with their ids.

        Each such build and its open steps get state 'interrupted', `reason`, and finished_at =
        the last time the master heard of the build (its last log chunk or step start). With
        `requeue`, their requests go back to the queue and the result is RETRY ("will be run
        again", Buildbot's choice); without, the result is EXCEPTION.

        On a shared store only the builds (and pending claims) of `master` are touched — this
        master's by default; on SQLite, every unfinished build (one master owns the file).
        """
        if self.shared and master is None:
            master = self.master
        d = self._call(sql.mark_interrupted, reason, requeue, master if self.shared else None)

        def forget(cut):
            self._forget_steps(set(cut))
            return cut
        return d.addCallback(forget)

    # -- several masters (a shared store) ------------------------------------------------------

    def queue_and_claim(self, builder: str, reason: str = "", claim: bool = True):
        """Queue a request and, with `claim`, claim the builder's oldest queued request for
        this master in the same transaction. Fires with {"id", "claimed": request dict or
        None, "position": int or None}."""
        return self._call(sql.queue_and_claim, builder, reason, self._reactor.seconds(), claim)

    def claim_request(self, builders):
        """Claim the oldest queued request of one of `builders` for this master, skipping any
        another master is claiming at that moment (FOR UPDATE SKIP LOCKED). Fires with the
        request dict (id, builder, submitted_at, reason, retries) or None. The claim becomes
        the build's in start_build, or goes back with unclaim_request."""
        return self._call(sql.claim_request, tuple(builders), self._reactor.seconds())

    def unclaim_request(self, request_id: int):
        """Give back a claim that no build came of; fires with True if it was ours."""
        return self._call(sql.unclaim_request, request_id)

    def request_position(self, request_id: int):
        """Fires with 1 for the oldest queued request, or None when it is not queued."""
        return self._call(sql.request_position, request_id, write=False)

    def cancel_queued_request(self, request_id: int):
        """Take a queued request off the queue (any master's); fires with False if it is not
        queued."""
        return self._call(sql.cancel_queued_request, request_id)

    def request(self, request_id: int):
        """Fires with a request's dict (id, builder, state, claimed_by_build,
        claimed_by_master, retries), or None."""
        return self._call(sql.request, request_id, write=False)

    def build_brief(self, build_id: int):
        """Fires with a build (as in builds()) and its steps without log sizes; None if
        unknown. For following a build another master runs."""
        return self._call(sql.build_brief, build_id, write=False)

    def request_cancel(self, build_id: int, who: str):
        """Ask whichever master runs `build_id` to cancel it; fires with that master's name,
        or None if the build is not running. NoSuchBuild."""
        return self._call(sql.request_cancel, build_id, who)

    def builds(self, builder: str | None = None, limit: int = 20):
        """Fires with the most recent builds, newest first, as dicts: id, builder, number,
        slave, state, result, result_name, started_at, finished_at, duration, request_id,
        reason, interrupted_reason, master."""
        return self._call(sql.builds, builder, limit, write=False)

    def build(self, build_id: int):
        """Fires with one build (as in builds()) plus "steps": a list of dicts id, number,
        name, started_at, finished_at, result, result_name, rc, log_bytes. NoSuchBuild."""
        return self._call(sql.build, build_id, write=False)

    def log(self, build_id: int, step: int | str | None = None, after_seq: int | None = None,
            max_bytes: int | None = None, with_step: bool = False):
        """Fires with the build's log — one step's if `step` (number or name) is given — as a
        list of (seq, stream, text) in the order received, from after `after_seq` on.

        seq grows with every chunk stored, across steps, so `--follow` polls with the last
        seq it saw. `max_bytes` stops after the row that reaches it (always at least one row),
        for paging large logs through PB. with_step: (seq, step_number, stream, text).
        NoSuchBuild / NoSuchStep."""
        return self._call(sql.log, build_id, step, after_seq, max_bytes, with_step,
                          write=False)

    def set_size_limit(self, max_bytes: int | None):
        """Cap the file's size (SQLite's max_page_count); None lifts the cap. Past it, writes
        fail as on a full disk. Fires with the cap in bytes in force. SQLite only."""
        if self.shared:
            return defer.fail(StoreError("store: a size limit is a SQLite setting; on "
                                         "PostgreSQL use the server's own quotas"))
        return self._call(sql.set_size_limit, max_bytes, write=False)

