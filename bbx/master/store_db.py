"""The writer-thread half of the store, whatever the engine: log batches, transactions, events.

A `Database` runs only on the Store's own one-thread pool (bbx/master/store.py), so every SQL
statement of the master runs there, in the order the reactor asked for it. The engines are
subclasses: bbx/master/store_sqlite.py (one file, one master) and bbx/master/store_pg.py
(PostgreSQL, several masters). This module holds what they share:

- the log batches: merged into rows, committed in one transaction, held in memory in order
  while writes fail, the oldest dropped (and marked) past a cap;
- `transact`: run one query function of bbx/master/store_queries.py in one transaction. The
  function gets an `Sql` — the thin dialect layer: `?` placeholders, new row ids, row locks —
  and may raise events (a build started, a request was queued). Events go back to the reactor
  side after the commit; on PostgreSQL they are also NOTIFYed to the other masters within the
  transaction, so they arrive exactly when the change is visible.
"""

from __future__ import annotations

import json
from collections import deque
from contextlib import contextmanager

from .store_schema import SCHEMA_VERSION  # noqa: F401  (callers import it from here too)

# Rows of about this size: large enough that the per-row cost vanishes against the bytes,
# small enough that `bbx log --follow` pages and PB answers (640 KiB banana limit) stay small.
CHUNK_BYTES = 64 * 1024

# The values of builds.state and requests.state.
STATE_RUNNING, STATE_FINISHED, STATE_INTERRUPTED = "running", "finished", "interrupted"
REQUEST_QUEUED, REQUEST_CLAIMED, REQUEST_DONE = "queued", "claimed", "done"

# The one NOTIFY channel of a shared store; payloads are JSON [kind, sender, *args].
EVENT_CHANNEL = "bbx_events"


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


def event_payload(kind: str, sender: str, args) -> str:
    return json.dumps([kind, sender, *args], separators=(",", ":"))


class Sql:
    """What a query function gets: one transaction on one engine, through `?` placeholders.

    `all` / `one` fetch, `run` returns the row count, `write` returns nothing (so an engine
    may send it on without waiting for its answer), `insert` the new row's id (None when an
    INSERT ... SELECT added no row); `for_update`
    and `skip_locked` are the row-lock clauses to append to a SELECT ("" on SQLite, whose
    writer holds the whole file). `event(kind, *args)` records something other parts of the
    master (and, on PostgreSQL, other masters) should hear once this transaction commits.
    """

    engine = ""
    for_update = ""
    skip_locked = ""

    def __init__(self, master: str):
        self.master = master
        self.events: list[tuple] = []
        self.trace = None

    def all(self, query: str, args=()) -> list:
        raise NotImplementedError

    def one(self, query: str, args=()):
        rows = self.all(query, args)
        return rows[0] if rows else None

    def run(self, query: str, args=()) -> int:
        raise NotImplementedError

    def write(self, query: str, args=()) -> None:
        self.run(query, args)

    def many(self, query: str, rows) -> None:
        raise NotImplementedError

    def insert(self, query: str, args=()) -> int:
        raise NotImplementedError

    def event(self, kind: str, *args) -> None:
        self.events.append((kind, *args))


class Database:
    """The engine-independent part of the writer thread's store. Subclasses connect, migrate,
    and provide `_transaction(write)` (a context manager yielding an Sql, committing at its
    end and rolling back on an exception), `_write_log_rows()` and `errors` (the engine's
    exception classes)."""

    engine = ""
    shared = False
    errors: tuple = ()

    def __init__(self, where: str, max_held_bytes: int, master: str = ""):
        self.where = where  # what messages name: a path, or a URL without its password
        self.max_held_bytes = max_held_bytes
        self.master = master
        # Rows (step_id, stream, data, received_at) that a failed commit left to retry, in order.
        self.held: deque = deque()
        self.held_bytes = 0
        self.dropped: dict[int, int] = {}  # step_id -> bytes dropped, marker not yet written
        self.trace = None  # tests: called with each statement, on the thread that runs it

    # -- what the engines provide ----------------------------------------------------------

    def open(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextmanager
    def _transaction(self, write: bool):
        raise NotImplementedError
        yield

    def _write_log_rows(self, sql: Sql, rows, markers, builds) -> None:
        raise NotImplementedError

    # -- log batches ----------------------------------------------------------------------

    def append(self, batch, now, builds=()) -> dict:
        """Commit a batch of (step_id, stream, text) appends, behind any rows held from
        earlier failures; `builds` are the builds those steps belong to (for their followers).
        Never raises for a write failure: reports it and holds the rows."""
        for row in merge(batch, now):
            self.held.append(row)
            self.held_bytes += len(row[2])
        status = {"ok": True, "error": None, "held": 0, "dropped": 0, "what": ""}
        if not self.held and not self.dropped:
            return status
        markers = [(step, "header", lost_marker(n), now) for step, n in self.dropped.items()]
        try:
            with self._transaction(True) as sql:
                self._write_log_rows(sql, list(self.held), markers, builds)
        except self.errors as error:
            status.update(ok=False, error=one_line(error), dropped=self._drop_oldest())
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
            with self._transaction(False) as sql:
                marks = ",".join("?" * len(steps))
                builds = [row[0] for row in sql.all(
                    f"SELECT DISTINCT build_id FROM steps WHERE id IN ({marks}) "
                    "ORDER BY build_id", steps)]
        except self.errors:
            builds = []
        if builds:
            return ("build " if len(builds) == 1 else "builds ") + ", ".join(map(str, builds))
        return "step " + ", ".join(map(str, steps))

    # -- everything else ------------------------------------------------------------------

    def transact(self, fn, args, write):
        """Run fn(sql, *args) in one transaction; return (its result, the events it raised)."""
        with self._transaction(write) as sql:
            result = fn(sql, *args)
        return result, sql.events


def merge(batch, now):
    """(step, stream, text) appends → rows (step, stream, utf-8 bytes, now), consecutive
    appends to the same step and stream joined into rows of up to CHUNK_BYTES."""
    rows = []
    parts: list = []
    key = None
    size = 0

    def emit():
        if isinstance(parts[0], bytes):
            data = b"".join(p if isinstance(p, bytes) else encode(p) for p in parts)
        else:
            data = encode("".join(p if isinstance(p, str) else p.decode("utf-8", "replace")
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


def encode(text: str) -> bytes:
    # surrogateescape: bytes a slave could not decode come back as the very bytes it read.
    return text.encode("utf-8", "surrogateescape")


def lost_marker(nbytes: int) -> bytes:
    return (f"\n[bbx: {nbytes} bytes of log were lost here: the store could not be written "
            "for too long]\n").encode()


def one_line(error) -> str:
    """An engine's error message on one line (PostgreSQL's carry DETAIL / HINT lines)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
