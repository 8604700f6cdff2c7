"""`bbx run` commands waiting for a free slave of their builder, in arrival order.

A `bbx run` on a builder whose slaves are all busy waits here instead of failing (unless the
operator said --no-wait-for-slave). The build queue serves these waiters first whenever it
looks for free slaves — someone is waiting at a terminal — so a waiter's position counts the
`bbx run`s ahead of it on the same builder only. Each waiter's CLI hears its position
whenever it changes; those notices are one-way with a deadline, so a stalled CLI can cost at
most one outstanding call and never holds up the master.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from bbx.pb.control import UnknownBuilder

log = Logger()

# How long a waiting CLI may take to answer one position notice before the master stops
# waiting for that answer (and may send the next): the CLI's own answer deadline (10 s).
NOTICE_DEADLINE = 10.0


class RunWaiter:
    """One waiting `bbx run`: its builder's name, `start(sb)` — called once with a free
    SlaveBuilder, it must reserve it at once (Build start) — and the CLI's observer reference
    (None in tests), which gets `waiting({"builder", "position", "busy": [slave names]})`.
    `done` fires with what `start` returned, or fails (the builder went away)."""

    def __init__(self, builder: str, start: Callable, observer=None):
        self.builder = builder
        self.start = start
        self.observer = observer
        self.position: int | None = None
        self.done = defer.Deferred()
        self._told: int | None = None     # the last position the CLI acknowledged or was sent
        self._in_flight = False

    def tell(self, reactor, info: dict) -> None:
        """Send the CLI its position: one call at a time, the latest position wins."""
        self.position = info["position"]
        if self.observer is None or self._in_flight or self._told == self.position:
            return
        self._in_flight = True
        self._told = self.position
        try:
            d = self.observer.callRemote("waiting", info)
        except Exception as e:  # e.g. the broker is already gone
            log.info("could not tell a waiting client its position: {e}", e=str(e))
            self._in_flight = False
            return
        d.addTimeout(NOTICE_DEADLINE, reactor)

        def answered(_):
            self._in_flight = False
            if self.position != self._told and not self.done.called:
                self.tell(reactor, dict(info, position=self.position))

        d.addErrback(lambda f: None)
        d.addCallback(answered)


class RunWaiters:
    """The waiting `bbx run`s of one master, oldest first."""

    def __init__(self, queue):
        self.queue = queue  # the BuildQueue: its `builders` (name -> Builder) and reactor
        self.waiting: list[RunWaiter] = []

    @property
    def builders(self) -> dict:
        return self.queue.builders  # read each time: a reconfig may swap the dict

    @property
    def reactor(self):
        return self.queue.reactor

    def add(self, waiter: RunWaiter) -> None:
        self.waiting.append(waiter)
        self._tell_positions()

    def remove(self, waiter: RunWaiter) -> None:
        """The CLI went away (or gave up): forget it."""
        if waiter in self.waiting:
            self.waiting.remove(waiter)
            self._tell_positions()

    def serve(self) -> None:
        """Start every waiter whose builder has a free slave now, oldest first."""
        for waiter in list(self.waiting):
            builder = self.builders.get(waiter.builder)
            if builder is None:
                self.waiting.remove(waiter)
                waiter.done.errback(UnknownBuilder(
                    f"builder {waiter.builder} was removed while the command waited for a slave"))
                continue
            sb = builder.free_slave_builder()
            if sb is None:
                continue
            self.waiting.remove(waiter)
            try:
                started = waiter.start(sb)
            except Exception as e:
                waiter.done.errback(e)
            else:
                waiter.done.callback(started)
        self._tell_positions()

    def _tell_positions(self) -> None:
        ahead: dict[str, int] = {}
        for waiter in self.waiting:
            position = ahead[waiter.builder] = ahead.get(waiter.builder, 0) + 1
            builder = self.builders.get(waiter.builder)
            busy = [] if builder is None else builder.attached()
            waiter.tell(self.reactor, {"builder": waiter.builder, "position": position,
                                       "busy": busy})
