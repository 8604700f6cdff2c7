"""BuildQueue: build requests wait here until a slave of their builder is free.

Requests live in the store (so a restarted master picks them up again) and, while queued,
in memory in arrival order. Whenever something may have freed a slave — a request arrives,
a slave attaches, a build ends — the queue walks its requests oldest first and starts a
Build for each one whose builder has an attached, idle slave below its max_builds.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from bbx.pb.control import UnknownBuild

from . import results
from .build import Build
from .builder import Builder, SlaveLoad
from .clients import ClientRef
from .config import MasterConfig
from .runwait import RunWaiters

log = Logger()

# What a build cut short by a master stop or crash is marked with (store.mark_interrupted).
INTERRUPTED_REASON = "the master was stopped"

# A request whose build never got going (the slave failed its ping, the store could not record
# the build) waits this long before its next try, doubling on each consecutive failure up to
# the cap — retrying on the very next reactor turn turns a full disk into a busy loop.
RETRY_HOLD_FIRST = 1.0
RETRY_HOLD_MAX = 60.0


class BuildQueue:
    """Queued requests, running builds, and the rule that matches one to a free slave."""

    def __init__(self, config: MasterConfig, builders: dict[str, Builder], load: SlaveLoad,
                 store, reactor, basedir):
        self.config = config
        self.builders = builders
        self.load = load
        self.store = store
        self.reactor = reactor
        self.basedir = Path(basedir)
        self.retry_lost = config.retry_lost
        self.requests: list[dict] = []          # queued, oldest first
        self.request_watchers: dict[int, list] = {}  # request id -> CLI refs waiting for it
        self.running: dict[int, Build] = {}     # build id -> Build, once recorded
        self.starting: set[Build] = set()       # chosen a slave, not recorded yet
        self.stopping = False
        self._scan_pending = False
        self._held_until: dict[int, float] = {}  # request id -> earliest time to try again
        self._holds: dict[int, int] = {}         # request id -> consecutive failed starts
        self._wake = None                         # the scan timer for the next held request
        self.run_waiters = RunWaiters(self)  # `bbx run`s waiting for a slave
        for builder in builders.values():
            builder.on_attach = self.maybe_start

    @defer.inlineCallbacks
    def resume(self):
        """At start: close builds a stopped or killed master left open, load the queue."""
        cut = yield self.store.mark_interrupted(INTERRUPTED_REASON, requeue=True)
        if cut:
            log.info("marked {n} build(s) left running by the last master as interrupted: "
                     "{ids}", n=len(cut), ids=", ".join(map(str, cut)))
        pending = yield self.store.pending_requests()
        for request in pending:
            if request["builder"] in self.builders:
                self.requests.append(request)
            else:
                log.warn("build request {id} is for builder {b}, which is no longer "
                         "configured; dropping it", id=request["id"], b=request["builder"])
                yield self.store.finish_request(request["id"])
        if self.requests:
            log.info("{n} build request(s) waiting in the queue", n=len(self.requests))
        self.maybe_start()

    # -- requests ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def submit(self, builder: str, reason: str = "", watcher=None):
        """Queue a build of `builder`; fires with the request id. `watcher` (a CLI ref) is
        attached to the build that serves the request, and to its retries."""
        request_id = yield self.store.queue_request(builder, reason)
        self.requests.append({"id": request_id, "builder": builder,
                              "submitted_at": self.reactor.seconds(), "reason": reason,
                              "retries": 0})
        if watcher is not None:
            self.request_watchers.setdefault(request_id, []).append(watcher)
        if not self.stopping:
            self._scan()  # now, so the answer can say whether the request had to wait
        return request_id

    def queued(self, builder: str | None = None):
        """Fires with the queued requests (oldest first), of `builder` or of all: [{"id",
        "builder", "submitted_at", "reason", "retries"}]."""
        return defer.succeed([dict(r) for r in self.requests
                              if builder is None or r["builder"] == builder])

    def position(self, request_id: int) -> int | None:
        """1 for the oldest queued request, None when it is not queued (anymore)."""
        for index, request in enumerate(self.requests, 1):
            if request["id"] == request_id:
                return index
        return None

    @defer.inlineCallbacks
    def cancel_request(self, request_id: int):
        """Remove a queued request; UnknownBuild if it is not queued."""
        for request in self.requests:
            if request["id"] == request_id:
                self.requests.remove(request)
                self._held_until.pop(request_id, None)
                self._holds.pop(request_id, None)
                yield self.store.finish_request(request_id)
                for ref in self.request_watchers.pop(request_id, []):
                    _tell(ref, "buildFinished", {"request_id": request_id, "build_id": None,
                                                 "result": results.CANCELLED,
                                                 "result_name": results.name(results.CANCELLED),
                                                 "steps": [], "requeued": False,
                                                 "cancelled": "cancelled while queued"})
                log.info("build request {id} cancelled while queued", id=request_id)
                return {"request_id": request_id, "build_id": None, "state": "removed"}
        raise UnknownBuild(f"no queued build request {request_id}; `bbx builds` lists builds")

    # -- matching requests to slaves --------------------------------------------------------

    def maybe_start(self) -> None:
        """Start what can start, on the next reactor turn (many triggers, one scan)."""
        if self._scan_pending or self.stopping:
            return
        self._scan_pending = True
        self.reactor.callLater(0, self._scan)

    def _scan(self) -> None:
        self._scan_pending = False
        if self.stopping:
            return
        self.run_waiters.serve()
        now = self.reactor.seconds()
        for request in list(self.requests):
            builder = self.builders.get(request["builder"])
            if builder is None:
                continue
            if self._held_until.get(request["id"], now) > now:
                self._wake_at(self._held_until[request["id"]])
                continue
            sb = builder.free_slave_builder()
            if sb is None:
                continue
            self.requests.remove(request)
            self.start_build(builder, sb, builder.config.steps, request=request)

    def start_build(self, builder: Builder, sb, steps, *, request: dict | None = None,
                    ping=True, observers=()) -> Build:
        """Reserve `sb` and its slave's slot at once, then run a Build on it.

        `request` is the queued request it serves (None for `bbx run`); `observers` are
        command observers attached to every command of the build."""
        build = Build(self, builder, sb, steps, request=request, ping=ping)
        build.command_observers.extend(observers)
        if request is not None:
            build.first_command.addErrback(lambda f: None)
            for ref in self.request_watchers.get(request["id"], []):
                build.watch(ref)
        sb.build = build
        self.load.take(sb.slave.name)
        self.starting.add(build)
        build.run()
        return build

    def build_started(self, build: Build) -> None:
        self.starting.discard(build)
        self.running[build.build_id] = build

    def build_ended(self, build: Build) -> None:
        self.starting.discard(build)
        self.running.pop(build.build_id, None)
        request = build.request
        if build.build_id is None and request is not None:
            self.requests.insert(0, request)  # never started: first in line, after a hold
            self._hold(request["id"])
        elif build.requeued and request is not None:
            request = dict(request, retries=request.get("retries", 0) + 1)
            self.requests.insert(0, request)
        elif request is not None:
            self.request_watchers.pop(request["id"], None)
        if request is not None and build.build_id is not None:
            self._held_until.pop(request["id"], None)
            self._holds.pop(request["id"], None)
        self.maybe_start()

    def _hold(self, request_id: int) -> None:
        failures = self._holds.get(request_id, 0)
        self._holds[request_id] = failures + 1
        delay = min(RETRY_HOLD_MAX, RETRY_HOLD_FIRST * 2 ** failures)
        self._held_until[request_id] = self.reactor.seconds() + delay
        log.info("request {id} could not start a build; trying again in {delay:g} s",
                 id=request_id, delay=delay)

    def _wake_at(self, when: float) -> None:
        if self._wake is not None and self._wake.active() and self._wake.getTime() <= when:
            return
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = self.reactor.callLater(max(0.0, when - self.reactor.seconds()),
                                            self.maybe_start)

    # -- operators ----------------------------------------------------------------------

    def find_running(self, build_id: int) -> Build | None:
        return self.running.get(build_id)

    def stop(self) -> None:
        """The master is stopping: start nothing more; running builds are left open."""
        self.stopping = True


def _tell(ref, method: str, info: dict) -> None:
    ClientRef(ref, "build watcher").call(method, info)
