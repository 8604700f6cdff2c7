"""EventHub: what the store's commits tell the rest of the master, and the other masters.

An event is a kind and a few ids: ("request", id), ("build", id, request_id), ("log", build_id),
("cancel", build_id, who), ("cancelled", request_id), ("master", name), and ("resync",) when
events may have been missed (a shared store's listener reconnected: everyone re-reads).
Each comes with its sender, the name of the master whose transaction raised it.

The store fires its own events after each commit; on a shared store the listener
(bbx/master/store_listen.py) fires the other masters' as their NOTIFYs arrive. Subscribers
run on the reactor thread; one that raises is logged and the others still run.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

log = Logger()


class EventHub:
    """Subscribers by event kind; fire(kind, sender, *args) calls each with (sender, *args)."""

    def __init__(self):
        self._subscribers: dict[str, list[Callable]] = {}

    def subscribe(self, kind: str, callback: Callable) -> Callable[[], None]:
        """Call `callback(sender, *args)` for every `kind` event; returns the unsubscriber."""
        self._subscribers.setdefault(kind, []).append(callback)

        def unsubscribe():
            subscribers = self._subscribers.get(kind, [])
            if callback in subscribers:
                subscribers.remove(callback)
        return unsubscribe

    def fire(self, kind: str, sender: str, *args) -> None:
        for callback in list(self._subscribers.get(kind, ())):
            try:
                callback(sender, *args)
            except Exception:
                log.failure("handling store event {kind} {args}", kind=kind, args=args)

    def wait(self, reactor, timeout: float, matches: dict[str, Callable]):
        """A Deferred that fires with (kind, sender, *args) of the first event for which
        `matches[kind](sender, *args)` is true, or with None after `timeout` seconds. Its
        cancel() stops waiting and fires it with None."""
        from twisted.internet import defer

        d = defer.Deferred(lambda _d: done(None))
        unsubscribers = []

        def done(value):
            for unsubscribe in unsubscribers:
                unsubscribe()
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(value)

        for kind, match in matches.items():
            def seen(sender, *args, _kind=kind, _match=match):
                if _match(sender, *args):
                    done((_kind, sender, *args))
            unsubscribers.append(self.subscribe(kind, seen))
        timer = reactor.callLater(timeout, done, None)
        return d
