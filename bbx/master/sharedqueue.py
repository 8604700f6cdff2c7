"""SharedBuildQueue: the build queue of one master among several on one PostgreSQL store.

The queue is the `requests` table, not memory. Whenever this master may have a free slave —
a request was queued or given back anywhere (NOTIFY), a slave attached, a build ended, or
every SWEEP_INTERVAL in case a notification was missed — it claims the oldest queued request
of a builder it has an idle slave for, with `FOR UPDATE SKIP LOCKED` (store.claim_request):
two masters never claim the same request, and neither waits on the other's lock. The claim
becomes the build's (store.start_build) or, if the slave fails its ping, goes back.

Requests queued here are watched here, wherever they run: a build another master runs for
one of them is followed through the store (bbx/master/buildfeed.py). A cancel for a build
running elsewhere is passed to its master as an event; one for a build running here arrives
the same way.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from bbx.pb.control import UnknownBuild

from . import results
from .buildfeed import RemoteBuildFeed
from .buildqueue import INTERRUPTED_REASON, BuildQueue, _tell
from .store import StoreError

log = Logger()

# Seconds between claim attempts when nothing happened: only a fallback for a notification
# lost while the listener reconnected; it reads the database only if a slave here is idle.
SWEEP_INTERVAL = 5.0


class SharedBuildQueue(BuildQueue):
    """A BuildQueue whose requests live in a store shared with other masters."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.feeds: dict[int, RemoteBuildFeed] = {}   # build id -> feed, for builds elsewhere
        self._claiming = False
        self._claim_again = False
        self._sweep: task.LoopingCall | None = None
        self._unsubscribe: list = []
        # Builders whose last claim found nothing queued, until a request for them is queued
        # (an event says so) or the sweep: a build ending here costs no query for nothing.
        self._empty: set[str] = set()
        self._positions: dict[int, int | None] = {}

    @defer.inlineCallbacks
    def resume(self):
        """At start: close this master's builds a crash left open, give back its claims, then
        claim what its slaves can run."""
        cut = yield self.store.mark_interrupted(INTERRUPTED_REASON, requeue=True)
        if cut:
            log.info("marked {n} build(s) this master left running as interrupted: {ids}",
                     n=len(cut), ids=", ".join(map(str, cut)))
        hub = self.store.events
        self._unsubscribe = [
            hub.subscribe("request", self._request_event),
            hub.subscribe("resync", lambda *_a: self._forget_empty()),
            hub.subscribe("build", self._build_event),
            hub.subscribe("cancel", self._cancel_event),
            hub.subscribe("cancelled", self._cancelled_event),
        ]
        self._sweep = task.LoopingCall(self._forget_empty)
        self._sweep.clock = self.reactor
        self._sweep.start(SWEEP_INTERVAL, now=False)
        self.maybe_start()

    def stop(self) -> None:
        super().stop()
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for feed in list(self.feeds.values()):
            feed.close()
        self.feeds.clear()

    def _request_event(self, _sender, _request_id, state=None, builder=None, *_args) -> None:
        if state == "queued" or state is None:
            if builder is None:
                self._empty.clear()
            else:
                self._empty.discard(builder)
            self.maybe_start()

    def _forget_empty(self, *_args) -> None:
        self._empty.clear()
        self.maybe_start()

    # -- requests ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def submit(self, builder: str, reason: str = "", watcher=None):
        """Queue a build of `builder` for any master, claiming one at once (in the same
        transaction) when this master has an idle slave for it; fires with the request id."""
        b = self.builders.get(builder)
        claim = (not self.stopping and b is not None and b.free_slave_builder() is not None)
        answer = yield self.store.queue_and_claim(builder, reason, claim)
        request_id = answer["id"]
        self._positions[request_id] = answer["position"]
        if watcher is not None:
            self.request_watchers.setdefault(request_id, []).append(watcher)
        claimed = answer["claimed"]
        if claimed is not None:
            sb = b.free_slave_builder()
            if sb is None or self.stopping:
                yield self.store.unclaim_request(claimed["id"])
            else:
                self.start_build(b, sb, b.config.steps, request=claimed)
        return request_id

    def queued(self, builder: str | None = None):
        return self.store.pending_requests(builder)

    def position(self, request_id: int):
        """The position `submit` saw (None: claimed at once); asked once, right after."""
        if request_id in self._positions:
            return self._positions.pop(request_id)
        return self.store.request_position(request_id)

    @defer.inlineCallbacks
    def cancel_request(self, request_id: int):
        """Take a queued request off the shared queue; UnknownBuild if it is not queued."""
        removed = yield self.store.cancel_queued_request(request_id)
        if not removed:
            raise UnknownBuild(f"no queued build request {request_id}; `bbx builds` lists "
                               "builds")
        log.info("build request {id} cancelled while queued", id=request_id)
        return {"request_id": request_id, "build_id": None, "state": "removed"}

    def _cancelled_event(self, _sender, request_id, *_args) -> None:
        for ref in self.request_watchers.pop(request_id, []):
            _tell(ref, "buildFinished", {"request_id": request_id, "build_id": None,
                                         "result": results.CANCELLED,
                                         "result_name": results.name(results.CANCELLED),
                                         "steps": [], "requeued": False,
                                         "cancelled": "cancelled while queued"})

    # -- claiming --------------------------------------------------------------------------

    def _scan(self) -> None:
        self._scan_pending = False
        if self.stopping:
            return
        self.run_waiters.serve()
        self._claim_round()

    def _claim_round(self):
        """Claim and start builds while this master has idle slaves and the store has
        requests for them. One round at a time; a trigger meanwhile makes one more."""
        if self._claiming:
            self._claim_again = True
            return defer.succeed(None)
        self._claiming = True
        d = defer.ensureDeferred(self._claim())

        def failed(failure):
            failure.trap(StoreError)
            log.warn("could not claim build requests: {e}", e=failure.getErrorMessage())

        def done(_):
            self._claiming = False
            if self._claim_again and not self.stopping:
                self._claim_again = False
                self.maybe_start()

        d.addErrback(failed)
        d.addBoth(done)
        return d

    def _free_builders(self) -> list[str]:
        return sorted(name for name, b in self.builders.items()
                      if b.config.steps and name not in self._empty
                      and b.free_slave_builder() is not None)

    async def _claim(self) -> None:
        while not self.stopping:
            free = self._free_builders()
            if not free:
                return
            request = await self.store.claim_request(free)
            if request is None:
                self._empty.update(free)
                return
            builder = self.builders.get(request["builder"])
            sb = builder.free_slave_builder() if builder is not None else None
            if sb is None or self.stopping:
                await self.store.unclaim_request(request["id"])
                continue
            self._stop_feed_for_request(request["id"])
            self.start_build(builder, sb, builder.config.steps, request=request)

    def build_ended(self, build) -> None:
        self.starting.discard(build)
        self.running.pop(build.build_id, None)
        request = build.request
        if request is not None:
            if build.build_id is None:
                # The slave failed its ping (or the store failed): the claim goes back, for
                # any master; this one's slave is dropped, so it will not take it again now.
                d = self.store.unclaim_request(request["id"])
                d.addErrback(lambda f: log.warn("could not give back build request {id}: {e}",
                                                id=request["id"], e=f.getErrorMessage()))
            elif not build.requeued:
                self.request_watchers.pop(request["id"], None)
        self.maybe_start()

    def abandon_running(self, why: str) -> None:
        """Another master declared this one dead and is retrying its builds: stop them here."""
        for build in list(self.running.values()):
            build.cancel(f"this master was {why}")

    # -- builds elsewhere ----------------------------------------------------------------------

    def _build_event(self, sender, build_id, request_id=None, *_args) -> None:
        if sender == self.store.master or build_id in self.running or build_id in self.feeds:
            return
        if request_id is None or request_id not in self.request_watchers:
            return
        self.follow(build_id, request_id, self.request_watchers[request_id])

    def follow(self, build_id: int, request_id: int | None, refs=()) -> RemoteBuildFeed:
        """Feed `refs` the events of a build another master runs (and any watcher added)."""
        feed = self.feeds.get(build_id)
        if feed is None:
            feed = self._new_feed(build_id, request_id)
        for ref in refs:
            feed.watch(ref)
        feed.refresh()
        return feed

    def _new_feed(self, build_id, request_id) -> RemoteBuildFeed:
        builder_config = None

        def ended(feed, requeued):
            self.feeds.pop(feed.build_id, None)
            if not requeued and feed.request_id is not None:
                self.request_watchers.pop(feed.request_id, None)

        feed = RemoteBuildFeed(self.store, build_id, request_id, builder_config, on_end=ended)
        self.feeds[build_id] = feed
        d = self.store.build_brief(build_id)

        def configure(brief):
            if brief is not None and brief["builder"] in self.builders:
                feed.builder_config = self.builders[brief["builder"]].config
        d.addCallbacks(configure, lambda f: None)
        return feed

    def _stop_feed_for_request(self, request_id: int) -> None:
        for feed in list(self.feeds.values()):
            if feed.request_id == request_id and feed.done:
                self.feeds.pop(feed.build_id, None)

    def _cancel_event(self, sender, build_id, who="an operator", *_args) -> None:
        build = self.running.get(build_id)
        if build is not None:
            build.cancel(f"cancelled by {who} (through master {sender})")
