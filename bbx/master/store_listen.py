"""Hear the other masters: LISTEN on a shared store's channel, on a connection of its own.

The connection is set up (connect, LISTEN, take the master's name lock) on a one-thread pool,
since those are SQL; then the reactor watches its socket and, when bytes arrive, reads the
NOTIFYs without blocking (libpq's consume_input on a non-blocking connection, no SQL) and
hands each one to the EventHub. Nothing polls.

The same session holds an advisory lock on the master's name for as long as the master runs,
so a second master started under the same name against the same database is refused at once
instead of sharing its heartbeat. If the connection breaks it is remade with a capped
backoff, and ("resync",) tells every subscriber to re-read what it follows.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from .store_db import EVENT_CHANNEL, StoreError, one_line
from .store_location import redact
from .store_pg import LOCK_SPACE, connect, require_psycopg

log = Logger(namespace="bbx.master.store")

# Reconnect after a lost listener connection: first after 1 s, doubling up to 30 s.
RECONNECT_FIRST = 1.0
RECONNECT_MAX = 30.0
# The most a NOTIFY payload may hold (PostgreSQL's own limit is 8000 bytes); anything longer,
# or not our JSON, is dropped with a warning: it did not come from a bbx master.
MAX_PAYLOAD = 8000


class NameTaken(StoreError):
    """Another running master holds this master's name on the shared store."""


@implementer(IReadDescriptor)
class EventListener:
    """LISTENs for the other masters' events and fires them into `hub`, on the reactor.

    `start()` fires once listening (NameTaken if a live master has our name); `stop()` closes.
    """

    def __init__(self, url: str, reactor, hub, master: str):
        self.url = url
        self.reactor = reactor
        self.hub = hub
        self.master = master
        self.conn = None
        self._pool: ThreadPool | None = None
        self._reading = False
        self._fd = -1
        self._stopped = False
        self._retry = None
        self._delay = RECONNECT_FIRST

    # -- lifecycle ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        pool = ThreadPool(minthreads=0, maxthreads=1, name="bbx-store-listen")
        pool.start()
        self._pool = pool
        try:
            self.conn = yield deferToThreadPool(self.reactor, pool, self._setup)
        except BaseException:
            self._pool = None
            pool.stop()
            raise
        self._watch()

    def _setup(self):
        """Thread side: a new connection that LISTENs and holds the name lock."""
        pg = require_psycopg()
        conn = connect(self.url, autocommit=True, role="listener", master=self.master)
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                               (LOCK_SPACE, self.master)).fetchone()[0]
            if not got:
                raise NameTaken(
                    f"store: another master named {self.master!r} is running against "
                    f"{redact(self.url)}; give each master its own name in master.toml "
                    "([master] name), or stop the other one")
            conn.execute(f"LISTEN {EVENT_CHANNEL}")
            conn.pgconn.nonblocking = 1
        except pg.Error as error:
            conn.close()
            raise StoreError(f"store: cannot listen on {redact(self.url)}: "
                             f"{one_line(error)}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def stop(self):
        """Stop listening; release the name lock (by closing the session). Fires when done."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._unwatch()
        conn, self.conn = self.conn, None
        pool, self._pool = self._pool, None
        if pool is None:
            return defer.succeed(None)
        d = deferToThreadPool(self.reactor, pool, _close, conn)
        d.addBoth(lambda result: pool.stop())
        return d

    # -- the reactor watches the socket ------------------------------------------------------

    def _watch(self):
        if self.conn is not None and not self._reading:
            # A duplicate of libpq's socket, ours to close: libpq closes its own the moment
            # it sees the connection lost, and the reactor must still be able to stop
            # watching what it watched.
            self._fd = os.dup(self.conn.pgconn.socket)
            self.reactor.addReader(self)
            self._reading = True

    def _unwatch(self):
        if self._reading:
            self.reactor.removeReader(self)
            self._reading = False
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "bbx-store-listen"

    def connectionLost(self, reason):
        self._lost(reason.getErrorMessage())

    def doRead(self):
        conn = self.conn
        if conn is None:
            return None
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except Exception as error:  # psycopg.OperationalError: the server went away
            self._lost(one_line(error))
            return None
        while True:
            note = pgconn.notifies()
            if note is None:
                break
            self._deliver(note.extra)
        if pgconn.status != 0:  # not CONNECTION_OK
            self._lost("the connection closed")
        return None

    def _deliver(self, raw: bytes) -> None:
        try:
            if len(raw) > MAX_PAYLOAD:
                raise ValueError("too long")
            kind, sender, *args = json.loads(raw)
            if not isinstance(kind, str) or not isinstance(sender, str):
                raise ValueError("not [kind, sender, ...]")
        except (ValueError, TypeError) as error:
            log.warn("store: ignoring a notification on {channel} that no bbx master sent "
                     "({why})", channel=EVENT_CHANNEL, why=str(error))
            return
        if sender == self.master:
            return  # our own: fired already, right after our commit
        self.hub.fire(kind, sender, *args)

    # -- reconnecting ----------------------------------------------------------------------

    def _lost(self, why: str) -> None:
        if self.conn is None or self._stopped:
            return
        self._unwatch()
        conn, self.conn = self.conn, None
        if self._pool is not None:
            deferToThreadPool(self.reactor, self._pool, _close, conn).addErrback(lambda f: None)
        log.error("store: lost the listening connection to {where} ({why}); events from "
                  "other masters are missed until it is back, retrying in {delay:g} s",
                  where=redact(self.url), why=why, delay=self._delay)
        self._retry = self.reactor.callLater(self._delay, self._reconnect)

    def _reconnect(self):
        self._retry = None
        if self._stopped or self._pool is None:
            return
        d = deferToThreadPool(self.reactor, self._pool, self._setup)

        def back(conn):
            if self._stopped:
                deferToThreadPool(self.reactor, self._pool, _close, conn)
                return
            self.conn = conn
            self._delay = RECONNECT_FIRST
            self._watch()
            log.info("store: listening to {where} again", where=redact(self.url))
            self.hub.fire("resync", self.master)

        def failed(failure):
            if self._stopped:
                return
            self._delay = min(RECONNECT_MAX, self._delay * 2)
            log.error("store: cannot listen to {where} yet ({why}); retrying in {delay:g} s",
                      where=redact(self.url), why=failure.getErrorMessage(), delay=self._delay)
            self._retry = self.reactor.callLater(self._delay, self._reconnect)

        d.addCallbacks(back, failed)


def _close(conn) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
