"""How either end of a PB link notices that its peer has silently gone away.

Both roles send a keepalive every KEEPALIVE_INTERVAL seconds (the master prints to the slave,
the slave calls its perspective's `keepalive`; docs/protocol.md §4.4) and give up on a peer that
has sent nothing at all — no call, no answer, no update — for KEEPALIVE_DEADLINE seconds.
Out of the box a vanished peer is thus noticed within 90 s on either side, where Buildbot's
own defaults (a 600 s worker keepalive, an hourly master print) take many minutes.

Answers count: against a slave-era (0.8) master, which sends nothing of its own, the slave's
keepalive is answered every interval, so a healthy link is never quiet for a whole deadline.

Pure Python (the CLI imports the defaults without loading Twisted); time comes from the
clock passed in (a reactor, or `task.Clock` in tests).
"""

from __future__ import annotations

from typing import Callable

# Seconds between keepalives, on both sides (master.toml keepalive_interval, slave.toml
# keepalive). Three of them fit in one deadline, so one lost or late answer is not fatal.
KEEPALIVE_INTERVAL = 30
# Seconds of total silence after which the peer is declared gone (master.toml
# keepalive_timeout; the slave's derived deadline for the default interval, see
# bbx/slave/basedir.py).
KEEPALIVE_DEADLINE = 90


class SilenceWatchdog:
    """Calls `on_silent(seconds)` once `last_heard()` is `deadline` seconds old.

    `last_heard()` returns the clock time when the peer last sent anything. The watchdog
    wakes exactly when the deadline would pass and re-arms while traffic keeps coming, so
    it fires no later than `deadline` after the last byte. `running` / `stop()` match a
    LoopingCall's, so it can sit among a link's loops.
    """

    def __init__(self, clock, deadline: float, last_heard: Callable[[], float],
                 on_silent: Callable[[float], None]):
        if not deadline > 0:
            raise ValueError(f"a silence deadline must be positive, not {deadline!r}")
        self.clock = clock
        self.deadline = float(deadline)
        self.last_heard = last_heard
        self.on_silent = on_silent
        self._timer = None
        self.running = False

    def start(self) -> None:
        self.running = True
        self._arm()

    def stop(self) -> None:
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        due = self.last_heard() + self.deadline - self.clock.seconds()
        self._timer = self.clock.callLater(max(due, 0.0), self._check)

    def _check(self) -> None:
        self._timer = None
        if not self.running:
            return
        silent = self.clock.seconds() - self.last_heard()
        if silent >= self.deadline:
            self.running = False
            self.on_silent(silent)
            return
        self._arm()
