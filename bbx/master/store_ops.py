"""What the store can be asked, reactor side: one method per query of
bbx/master/store_queries.py, each run on the writer thread in its turn (Store._call).

`StoreOperations` is the half of `Store` (bbx/master/store.py) that names the operations;
the other half owns the writer thread, the log queue and the engine.
"""

from __future__ import annotations

from twisted.internet import defer

from . import store_queries as sql
from .store_db import STATE_FINISHED, StoreError


class StoreOperations:
    """The store's operations; every one returns a Deferred. Mixed into Store, which
    provides `_call(fn, *args, write=...)`, `_reactor`, `shared`, `master`, `_step_builds`."""

    def queue_request(self, builder: str, reason: str = ""):
        """Queue a build request. Fires with its id."""
        return self._call(sql.queue_request, builder, reason, self._reactor.seconds())

    def pending_requests(self, builder: str | None = None):
        """Fires with the queued requests (oldest first) as dicts: id, builder, submitted_at,
        reason, retries."""
        return self._call(sql.pending_requests, builder, write=False)

    def start_build(self, request_id: int | None, builder: str, slave: str,
                    first_step: str | None = None):
        """Start a build of `builder` on `slave`, claiming request `request_id` (None for a
        build nobody queued). Fires with (build_id, number); `number` counts per builder from
        1. NoSuchRequest / RequestNotQueued if the request cannot be claimed. With
        `first_step` (its name), step 1 starts in the same transaction and it fires with
        (build_id, number, step_id): one commit fewer per build."""
        if first_step is None:
            return self._call(sql.start_build, request_id, builder, slave,
                              self._reactor.seconds())
        d = self._call(sql.start_build_and_step, request_id, builder, slave, first_step,
                       self._reactor.seconds())

        def remember(started):
            self._step_builds[started[2]] = started[0]
            return started
        return d.addCallback(remember)

    def requeue_request(self, request_id: int):
        """Put a claimed request back in the queue (its build was cut short); retries += 1."""
        return self._call(sql.requeue_request, request_id)

    def finish_request(self, request_id: int):
        """Mark a request done: no build will be started for it again (an unknown id changes
        nothing)."""
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
        return self._call(sql.finish_step, step_id, result, rc, self._reactor.seconds(),
                          self._step_builds.get(step_id))

    def finish_build(self, build_id: int, result: int, state: str = STATE_FINISHED,
                     reason: str | None = None):
        """Record a build's result; state 'finished' or 'interrupted' (with `reason`). A build
        already closed (by another master that declared this one dead) keeps its result."""
        self._forget_steps({build_id})
        return self._call(sql.finish_build, build_id, result, state, reason,
                          self._reactor.seconds())

    def end_build(self, build_id: int, result: int, request_id: int | None,
                  requeue: bool = False):
        """finish_build (state 'finished') and, for a build of a request, finish_request — or
        requeue_request with `requeue` — in one transaction: a build's last write is one
        commit. Fires once both are committed."""
        self._forget_steps({build_id})
        return self._call(sql.end_build, build_id, result, STATE_FINISHED, None,
                          self._reactor.seconds(), request_id, requeue)

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

    def request_state(self, request_id: int):
        """Fires with {"request_id", "builder", "state", "build_id"} (the newest build serving
        the request, None before one started), or None for an unknown request."""
        return self._call(sql.request_state, request_id, write=False)

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

