"""RemoteBuildFeed: watchers on this master follow a build another master runs.

A CLI that asked this master for a build (`bbx build`), or to watch one, hears the same calls
whichever master runs it: buildStarted, stepStarted, update (the log, as update envelopes),
stepFinished, buildFinished. For a build running elsewhere they come from the shared store:
every event about the build (its steps, its new log rows, its request) makes the feed read
what is new — the build's steps first, then its log after the last row sent — and pass it on.
Nothing polls; events arrive by LISTEN/NOTIFY (bbx/master/store_listen.py), and a ("resync",)
after a lost listener makes every feed read again.

Order is kept as the running master wrote it: a step's rows come after its stepStarted and
before its stepFinished, since a step seen finished has every row committed (its master's
writer commits in order) and rows of a step not yet seen wait for the next read.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from . import results
from .build import BuildWatcher
from .store import REQUEST_CLAIMED, StoreError

log = Logger()

# One read of the log: a few store rows, below banana's 640 KiB limit per PB call.
FEED_PAGE = 256 * 1024


class RemoteBuildFeed:
    """Feeds `watchers` (PB refs) the events of build `build_id`, which another master runs.

    `on_end(feed, requeued)` is called once the build's end has been sent. New watchers may be
    added with watch(ref) at any time; each first hears buildStarted.
    """

    def __init__(self, store, build_id: int, request_id: int | None, builder_config=None, *,
                 on_end=None):
        self.store = store
        self.build_id = build_id
        self.request_id = request_id
        self.builder_config = builder_config
        self.on_end = on_end
        self.watchers: list[BuildWatcher] = []
        self.info: dict | None = None
        self.last_seq: int | None = None
        self.steps_started: set[int] = set()
        self.steps_done: dict[int, dict] = {}
        self.done = False
        self._reading = False
        self._again = False
        hub = store.events
        self._unsubscribe = [
            hub.subscribe("log", lambda _s, build_id, *a: self._touched(build_id)),
            hub.subscribe("build", lambda _s, build_id, *a: self._touched(build_id)),
            hub.subscribe("request", lambda _s, request_id, *a: self._request_touched(request_id)),
            hub.subscribe("resync", lambda *_a: self.refresh()),
        ]

    def watch(self, ref) -> None:
        watcher = BuildWatcher(ref)
        self.watchers.append(watcher)
        if self.info is not None:
            watcher.call("buildStarted", self.info)

    def close(self) -> None:
        self.done = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _touched(self, build_id) -> None:
        if build_id == self.build_id:
            self.refresh()

    def _request_touched(self, request_id) -> None:
        if self.request_id is not None and request_id == self.request_id:
            self.refresh()

    # -- reading -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what is new and pass it on (one read at a time; a call meanwhile reads again)."""
        if self.done:
            return
        if self._reading:
            self._again = True
            return
        self._reading = True
        d = defer.ensureDeferred(self._read())

        def finished(_):
            self._reading = False
            if self._again and not self.done:
                self._again = False
                self.refresh()

        def failed(failure):
            if failure.check(StoreError):
                log.warn("following build {id}: {e}", id=self.build_id,
                         e=failure.getErrorMessage())
            else:
                log.failure("following build {id}", failure, id=self.build_id)

        d.addErrback(failed)
        d.addBoth(finished)

    async def _read(self) -> None:
        while not self.done:
            brief = await self.store.build_brief(self.build_id)
            if brief is None:
                return
            if self.info is None:
                self.info = self._build_info(brief)
                self._send("buildStarted", self.info)
            steps = {s["number"]: s for s in brief["steps"]}
            complete = await self._send_log(steps)
            if not complete:
                continue  # a full page: there is more to read now
            for number in sorted(steps):
                step = steps[number]
                if step["finished_at"] is not None and number not in self.steps_done:
                    if step["result"] != results.SKIPPED:  # a skipped step never started
                        self._step_started(step)
                    done = dict(self._step_info(step), result=step["result"],
                                result_name=step["result_name"], rc=step["rc"],
                                duration=step["duration"])
                    self.steps_done[number] = done
                    self._send("stepFinished", done)
                elif step["finished_at"] is None:
                    self._step_started(step)
            if brief["finished_at"] is not None:
                await self._finish(brief)
            return

    async def _send_log(self, steps: dict) -> bool:
        """Send the rows after last_seq of steps already seen; True when nothing is left."""
        rows = await self.store.log(self.build_id, None, self.last_seq, FEED_PAGE,
                                    with_step=True)
        size = 0
        for seq, number, stream, text in rows:
            if number not in steps:
                return True  # a step begun after we read the steps: the next read has it
            self._step_started(steps[number])
            if stream.startswith("log:"):
                envelope = [[{"log": [stream[4:], text]}, 0]]
            else:
                envelope = [[{stream: text}, 0]]
            waits = [d for w in list(self.watchers) for d in [w.call("update", envelope)]
                     if d is not None]
            if waits:
                await defer.DeferredList(waits, consumeErrors=True)  # the CLIs' flow control
            self.last_seq = seq
            size += len(text)
        return size < FEED_PAGE

    async def _finish(self, brief: dict) -> None:
        requeued = False
        if self.request_id is not None:
            request = await self.store.request(self.request_id)
            if (request is not None and request["state"] == REQUEST_CLAIMED
                    and request["claimed_by_build"] == self.build_id):
                return  # its master has not yet decided the request's fate: next event
            requeued = request is not None and request["claimed_by_build"] != self.build_id \
                and request["state"] != "done"
        summary = dict(self.info, result=brief["result"], result_name=brief["result_name"],
                       steps=[self.steps_done[n] for n in sorted(self.steps_done)],
                       requeued=requeued, duration=brief["duration"], cancelled=None,
                       lost=brief["interrupted_reason"]
                       if brief["result"] == results.RETRY else None)
        self._send("buildFinished", summary)
        self.close()
        if self.on_end is not None:
            self.on_end(self, requeued)

    # -- what the watchers hear ----------------------------------------------------------------

    def _build_info(self, brief: dict) -> dict:
        names = ([s.name for s in self.builder_config.steps] if self.builder_config is not None
                 else [s["name"] for s in brief["steps"]])
        return {"build_id": brief["id"], "number": brief["number"], "builder": brief["builder"],
                "slave": brief["slave"], "request_id": brief["request_id"], "steps": names,
                "started_at": brief["started_at"], "master": brief["master"]}

    def _step_info(self, step: dict) -> dict:
        kind = "shell"
        if self.builder_config is not None and 0 < step["number"] <= len(self.builder_config.steps):
            kind = self.builder_config.steps[step["number"] - 1].kind
        return {"build_id": self.build_id, "number": step["number"], "name": step["name"],
                "kind": kind}

    def _step_started(self, step: dict) -> None:
        if step["number"] not in self.steps_started:
            self.steps_started.add(step["number"])
            self._send("stepStarted", self._step_info(step))

    def _send(self, method: str, info: dict) -> None:
        for watcher in list(self.watchers):
            watcher.call(method, info)
