"""ClientRef: an operator's CLI that the master reports to, and the one place it calls one.

A watching `bbx run` or `bbx build` hands the master a Referenceable (an observer); the master
calls its remote_* methods as a command or a build goes on. Calls to slaves go through their
SlaveLink (bbx/master/link.py); calls to clients go through here.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.spread import pb

log = Logger()

# Seconds a client may take to answer one call. Far above any healthy terminal's pause (a
# slow pager, a loaded machine), far below "for ever".
ANSWER_DEADLINE = 120.0


class ClientRef:
    """One client's reference: `call(method, *args)` or nothing once the client is gone.

    A client that disconnects, or whose call fails, is gone from then on and costs nothing
    more; `on_gone` (if given) runs once when it disconnects. Waiting for the answer to
    `update` is the flow control from the operator's terminal back to the slave (a slow reader
    slows the command, docs/protocol.md §5.1 and bbx/pb/updates.py), so the deadline is long:
    a client that has not answered one call in ANSWER_DEADLINE seconds (a stopped process, a
    terminal frozen by Ctrl-S) is treated as gone: its connection is closed, which runs
    `on_gone` as a disconnect would, and the command or build goes on and is stored.
    """

    def __init__(self, ref, what: str = "client", on_gone=None, clock=None,
                 deadline: float | None = None):
        self.ref = ref
        self.what = what
        self.gone = False
        self._on_gone = on_gone
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._deadline = ANSWER_DEADLINE if deadline is None else deadline
        try:
            ref.notifyOnDisconnect(self._disconnected)
        except AttributeError:  # a local object standing in for a reference (tests)
            pass

    def _disconnected(self, _ref=None) -> None:
        self.gone = True
        if self._on_gone is not None:
            callback, self._on_gone = self._on_gone, None
            callback()

    def forget_on_gone(self) -> None:
        """The client's command ended: its disconnecting no longer means anything."""
        if self._on_gone is not None:
            self._on_gone = None
            try:
                self.ref.dontNotifyOnDisconnect(self._disconnected)
            except (AttributeError, ValueError):
                pass

    def call(self, method: str, *args):
        """ref.callRemote(method, *args), or None when gone; failures are logged, not raised."""
        if self.gone:
            return None
        try:
            d = self.ref.callRemote(method, *args)
        except Exception as e:  # e.g. an argument Banana cannot encode
            log.warn("{what} call {m} failed: {why}", what=self.what, m=method, why=str(e))
            self.gone = True
            return None
        timer = self._clock.callLater(self._deadline, self._stalled, method)
        d.addBoth(self._answered, timer)
        d.addErrback(self._failed, method)
        return d

    @staticmethod
    def _answered(result, timer):
        if timer.active():
            timer.cancel()
        return result

    def _stalled(self, method: str) -> None:
        if self.gone:
            return
        log.warn("{what} did not answer {m} within {s:.0f} s; closing its connection "
                 "(what it watched goes on and is stored)", what=self.what, m=method,
                 s=self._deadline)
        self.gone = True
        broker = getattr(self.ref, "broker", None)
        transport = getattr(broker, "transport", None)
        if transport is not None:
            transport.abortConnection()
        else:  # a local stand-in (tests): no connection to close
            self._disconnected()

    def _failed(self, failure, method):
        if not failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
            log.warn("{what} failed on {m}: {why}", what=self.what, m=method,
                     why=failure.getErrorMessage())
        self.gone = True
        return None
