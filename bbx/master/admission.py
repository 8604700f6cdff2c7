"""Admission control: a bounded number of attach sequences in flight, the rest in order.

When a master restarts, every slave logs in again within seconds. Each login runs the attach
sequence (print, the info chain, setBuilderList, print "attached": docs/protocol.md §4.1), a few
round trips that allocate the connection's link and builders. Run for thousands at once they
would fill the reactor's queue with half-made attaches, and the slaves already attached —
their pings, keepalives and command output — would wait behind all of them. So at most
`limit` attach sequences run at once; later ones wait their turn, first come first served.
A waiting login whose connection went away is skipped when its turn comes, never run.

Time comes from the injected clock (task.Clock in tests): it only measures the waits.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet import defer
from twisted.spread import pb

from .config import DEFAULT_MAX_ATTACHING  # attach sequences at once (master.toml max_attaching)


class AttachQueue:
    """Runs attach sequences `limit` at a time, in the order they arrived.

    `run(fn, *args, wanted=...)` calls `fn(*args)` (which returns a Deferred) when a place is
    free and fires with its result; `wanted()` is asked when the turn comes, and a False
    answer fails the call with PBConnectionLost without running it. `running`, `waiting` and
    `longest_wait` (seconds, since start) say how busy it is.
    """

    def __init__(self, clock, limit: int = DEFAULT_MAX_ATTACHING):
        if limit < 1:
            raise ValueError("an attach queue needs room for at least one attach")
        self.clock = clock
        self.limit = limit
        self.running = 0
        self.longest_wait = 0.0
        self._waiting: deque = deque()

    @property
    def waiting(self) -> int:
        """Attach sequences waiting their turn."""
        return len(self._waiting)

    def run(self, fn: Callable[..., defer.Deferred], *args,
            wanted: Callable[[], bool] = lambda: True) -> defer.Deferred:
        """Run `fn(*args)` now or when its turn comes; fire with its result."""
        d = defer.Deferred()
        self._waiting.append((fn, args, wanted, d, self.clock.seconds()))
        self._start_next()
        return d

    def _start_next(self) -> None:
        while self.running < self.limit and self._waiting:
            fn, args, wanted, d, queued_at = self._waiting.popleft()
            if not wanted():
                d.errback(pb.PBConnectionLost("the slave went away while waiting to attach"))
                continue
            self.longest_wait = max(self.longest_wait, self.clock.seconds() - queued_at)
            self.running += 1
            attach = defer.maybeDeferred(fn, *args)
            attach.addBoth(self._finished)
            attach.chainDeferred(d)

    def _finished(self, result):
        self.running -= 1
        self._start_next()
        return result

    def stop(self) -> None:
        """The master is stopping: every waiting attach fails as lost."""
        waiting, self._waiting = self._waiting, deque()
        for _, _, _, d, _ in waiting:
            d.errback(pb.PBConnectionLost("the master is stopping"))
