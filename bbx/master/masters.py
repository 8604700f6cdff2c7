"""MasterRegistry: this master's place among several on one PostgreSQL store.

It registers the master, heartbeats every `timeout / HEARTBEATS_PER_TIMEOUT` seconds, and on
each beat reads every master's row. A master whose beat counter has not moved for
`timeout - 2 × interval` seconds — as seen on *this* master's clock, so no two hosts' clocks
are ever compared — is declared dead here: its running builds become RETRY and their requests
go back to the queue (bbx/master/store_masters.py reap, a no-op if another master got there
first). That bound plus one beat of phase and one of observation is `timeout`: a dead master
is noticed within it.

The same beat records which master each configured slave is attached to, as the changes
since the last beat: an attach costs no database round trip of its own, whatever the farm's
size.
"""

from __future__ import annotations

import os
import socket
import uuid

from twisted.internet import defer, task
from twisted.logger import Logger

from . import store_masters as q
from .store import StoreError

log = Logger()

# Beats per heartbeat_timeout: 30 s → one beat every 5 s, so one slow beat is no alarm.
HEARTBEATS_PER_TIMEOUT = 6
# Why a master's builds were cut, in their interrupted_reason.
DEAD_REASON = "master {name} stopped heartbeating (declared dead by {by})"
STOPPED_REASON = "stopped"


class MasterRegistry:
    """Registration, heartbeat, dead-master reaping and attachment records of one master.

    `slaves` is the master's {name: SlavePerspective} (read for `.link` on each beat);
    `on_declared_dead(why)` runs when this master finds another master declared *it* dead
    (it was silent too long): its running builds are being retried elsewhere.
    """

    def __init__(self, store, reactor, name: str, timeout: float, slaves: dict, *,
                 endpoint=lambda: None, on_declared_dead=None):
        self.store = store
        self.reactor = reactor
        self.name = name
        self.timeout = timeout
        self.interval = timeout / HEARTBEATS_PER_TIMEOUT
        self.threshold = timeout - 2 * self.interval
        self.slaves = slaves
        self.endpoint = endpoint
        self.on_declared_dead = on_declared_dead
        self.incarnation = uuid.uuid4().hex
        self.recorded: dict[str, float] = {}      # slave -> attached_since, as last recorded
        self.seen: dict[str, tuple[int, float]] = {}  # master -> (beat, when it last moved)
        self.rows: list[dict] = []
        self.last_beat: float | None = None
        self._loop: task.LoopingCall | None = None

    @defer.inlineCallbacks
    def start(self):
        """Register; then beat every `interval` until stop()."""
        yield self.store.run_query(q.register, self.incarnation, self.reactor.seconds(),
                                   socket.gethostname(), os.getpid(), self.endpoint())
        self.last_beat = self.reactor.seconds()
        self._loop = task.LoopingCall(self._beat_safely)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    @defer.inlineCallbacks
    def stop(self):
        """Stop beating and mark this master stopped (its slaves detached)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        try:
            yield self.store.run_query(q.stopped, self.incarnation, STOPPED_REASON)
        except StoreError as e:
            log.error("could not record that this master stopped: {e}", e=str(e))

    # -- the beat --------------------------------------------------------------------------

    def _beat_safely(self):
        d = self.beat()
        d.addErrback(self._beat_failed)
        return d

    def _beat_failed(self, failure):
        if failure.check(StoreError):
            log.error("heartbeat: {e}", e=failure.getErrorMessage())
        else:
            log.failure("heartbeat failed", failure)

    def _attachment_changes(self):
        now_attached = {}
        for name, slave in self.slaves.items():
            link = slave.link
            if link is not None:
                now_attached[name] = link.connected_since
        attached = [(name, since) for name, since in now_attached.items()
                    if self.recorded.get(name) != since]
        detached = [name for name in self.recorded if name not in now_attached]
        return now_attached, attached, detached

    @defer.inlineCallbacks
    def beat(self):
        """One heartbeat: beat, record attachments, look at the other masters, reap the dead."""
        now_attached, attached, detached = self._attachment_changes()
        ours, rows = yield self.store.run_query(q.heartbeat, self.incarnation,
                                                self.reactor.seconds(), attached, detached)
        now = self.reactor.seconds()
        self.rows = rows
        if not ours:
            yield self._lost_our_row(rows)
            return
        self.last_beat = now
        self.recorded = now_attached
        for row in rows:
            name = row["name"]
            if name == self.name or row["state"] != "active":
                self.seen.pop(name, None)
                continue
            beat, moved = self.seen.get(name, (None, now))
            if beat != row["beat"]:
                self.seen[name] = (row["beat"], now)
            elif now - moved >= self.threshold:
                yield self._reap(name, beat, now - moved)

    @defer.inlineCallbacks
    def _reap(self, name: str, beat: int, silent: float):
        reason = DEAD_REASON.format(name=name, by=self.name)
        cut = yield self.store.run_query(q.reap, name, beat, reason)
        self.seen.pop(name, None)
        if cut is None:
            return  # another master reaped it, or it beat again meanwhile
        log.warn("master {name} sent no heartbeat for {s:.0f} s: declared dead; "
                 "{n} of its builds marked RETRY and their requests queued again{ids}",
                 name=name, s=silent, n=len(cut), ids=f" ({', '.join(map(str, cut))})" if cut else "")

    @defer.inlineCallbacks
    def _lost_our_row(self, rows):
        mine = next((r for r in rows if r["name"] == self.name), None)
        why = (f"declared {mine['state']}" + (f" ({mine['stopped_reason']})"
                                              if mine.get("stopped_reason") else "")
               if mine else "its row was removed")
        log.error("this master ({name}) was {why} while it was running: its builds are being "
                  "retried elsewhere; cancelling them here and registering again",
                  name=self.name, why=why)
        if self.on_declared_dead is not None:
            self.on_declared_dead(why)
        self.incarnation = uuid.uuid4().hex
        self.recorded = {}
        yield self.store.run_query(q.register, self.incarnation, self.reactor.seconds(),
                                   socket.gethostname(), os.getpid(), self.endpoint())

    # -- what `bbx masters` shows ------------------------------------------------------------

    @defer.inlineCallbacks
    def listing(self):
        """Every master: name, state, host, pid, endpoint, started_at, heartbeat_age (s since
        its beat last moved, as seen here), this (True for the answering master)."""
        rows = yield self.store.run_query(q.masters, write=False)
        now = self.reactor.seconds()
        out = []
        for row in rows:
            if row["name"] == self.name:
                age = now - self.last_beat if self.last_beat is not None else None
            elif row["name"] in self.seen:
                age = now - self.seen[row["name"]][1]
            else:  # stopped or dead: its own clock's last beat, read on ours (approximate)
                age = max(0.0, now - row["heartbeat_at"])
            out.append({"name": row["name"], "state": row["state"], "host": row["host"],
                        "pid": row["pid"], "endpoint": row["endpoint"],
                        "started_at": row["started_at"], "heartbeat_age": age,
                        "reason": row["stopped_reason"], "this": row["name"] == self.name})
        return out
