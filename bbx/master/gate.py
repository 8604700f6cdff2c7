"""The PB port's policy for connections that have not logged in yet.

Anyone who can reach the port can open connections and send bytes before proving who they
are, so until a login succeeds a connection is on probation (issue 8, cases 1-3):

* it must log in within `login_timeout` seconds, or it is closed;
* it may send at most PRE_LOGIN_BYTES before that (a login is a few hundred bytes);
* at most MAX_PENDING_PER_HOST of them per peer address and MAX_PENDING in all may exist at
  once; a newcomer over either cap closes the oldest one of the busiest address instead of
  being refused, so idle sockets cannot lock a real client (`bbx ping`) out;
* with the listening port to hold back (`watch_port`), reaching MAX_PENDING in all instead
  pauses accepting: a storm of slaves logging in at once (a master restart) waits, in order,
  in the kernel's listen queue (master.toml listen_backlog) rather than being cut off midway.
  Only connections on probation for STORM_GRACE seconds are then closed to make room, and
  accepting resumes once fewer than three quarters of MAX_PENDING are left;
* password checks from one address run one at a time, and after FREE_FAILURES failed ones
  each further failure holds that address's next check back for a delay that doubles up to
  MAX_FAILURE_DELAY — guessing is slow while attached slaves, whose connections are past the
  gate, are served as usual;
* what the gate logs about one address is at most LOG_BURST lines per LOG_WINDOW seconds,
  then one line saying how many were left out.

Time comes from the injected clock, so tests drive it with `task.Clock`. A connection is
anything with `peer_host` (str), `pending_since` (set here) and `refuse(why)`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from .config import DEFAULT_LOGIN_TIMEOUT  # how soon a connection must log in (master.toml)

log = Logger()

# Bytes a connection may send before its login succeeds. A PB login is the dialect choice,
# `login(name)` and `respond(digest, mind)`: about 150 bytes plus the name.
PRE_LOGIN_BYTES = 4096
# Unauthenticated connections per peer address, and in all. Logins take milliseconds, so
# these are only reached by connections that do not try to log in. With PRE_LOGIN_BYTES
# they bound what connections on probation can cost: 128 x 4 KiB of input.
MAX_PENDING_PER_HOST = 16
MAX_PENDING = 128
# Failed password checks an address may make before delays start (typos, a retried
# misconfiguration), the first delay, and the longest (below the login timeout, so a client
# waiting its turn is answered before it is closed).
FREE_FAILURES = 3
FIRST_FAILURE_DELAY = 0.5
MAX_FAILURE_DELAY = 16.0
# An address that has not failed for this long starts afresh.
FORGET_FAILURES_AFTER = 600.0
# Checks that may wait their turn per address; more are refused at once.
MAX_QUEUED_CHECKS = MAX_PENDING_PER_HOST
# Addresses whose failures are remembered; beyond this the oldest are forgotten.
MAX_TRACKED_HOSTS = 10_000
# While accepting is paused at MAX_PENDING, a connection on probation this long is closed to
# make room: an honest login takes two round trips (docs/protocol.md §1.4), well under a second
# even in a storm, since the attach sequence itself runs after probation
# (bbx/master/admission.py).
STORM_GRACE = 5.0
# Log lines about one address per window, before they are counted instead.
LOG_BURST = 20
LOG_WINDOW = 60.0


def failure_delay(failures: int) -> float:
    """Seconds an address waits before its next check after `failures` failed ones in a row."""
    over = failures - FREE_FAILURES
    if over <= 0:
        return 0.0
    return min(MAX_FAILURE_DELAY, FIRST_FAILURE_DELAY * 2.0 ** min(over - 1, 32))


class _HostChecks:
    """One address's password checks: failures so far, when the next may run, who waits."""

    def __init__(self):
        self.failures = 0
        self.last_failure = 0.0
        self.ready_at = 0.0
        self.waiting: deque = deque()
        self.timer = None


class LogThrottle:
    """At most LOG_BURST lines per LOG_WINDOW seconds per key; then one summary line."""

    def __init__(self, clock, *, burst: int = LOG_BURST, window: float = LOG_WINDOW):
        self.clock = clock
        self.burst = burst
        self.window = window
        self._keys: dict[str, list] = {}  # key -> [window start, lines, suppressed, timer]

    def warn(self, key: str, text: str) -> None:
        now = self.clock.seconds()
        entry = self._keys.get(key)
        if entry is None or now - entry[0] >= self.window:
            if entry is not None:
                self._summarise(key)
            entry = self._keys[key] = [now, 0, 0, None]
        if entry[1] < self.burst:
            entry[1] += 1
            log.warn("{text}", text=text)
            return
        entry[2] += 1
        if entry[3] is None:
            entry[3] = self.clock.callLater(entry[0] + self.window - now, self._summarise, key)

    def _summarise(self, key: str) -> None:
        entry = self._keys.pop(key, None)
        if entry is None:
            return
        timer = entry[3]
        if timer is not None and timer.active():
            timer.cancel()
        if entry[2]:
            log.warn("{n} more like these about {key} in {w:.0f} s, not logged", n=entry[2],
                     key=key, w=self.window)

    def stop(self) -> None:
        for key in list(self._keys):
            self._summarise(key)


class LoginGate:
    """Connections on probation until they log in, and the pace of password checks.

    The server factory calls connected / authenticated / disconnected for each connection;
    the realm runs every password check through `check(host, fn)`.
    """

    def __init__(self, clock, *, login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
                 pre_login_bytes: int = PRE_LOGIN_BYTES,
                 max_pending_per_host: int = MAX_PENDING_PER_HOST,
                 max_pending: int = MAX_PENDING):
        self.clock = clock
        self.login_timeout = login_timeout
        self.pre_login_bytes = pre_login_bytes
        self.max_pending_per_host = max_pending_per_host
        self.max_pending = max_pending
        self.log = LogThrottle(clock)
        # host -> {connection: deadline timer}, oldest first; every connection on probation.
        self._pending: dict[str, OrderedDict] = {}
        self._pending_count = 0
        self._since: dict = {}  # connection -> when it connected, oldest first
        self._hosts: OrderedDict[str, _HostChecks] = OrderedDict()
        self._pause = self._resume = None
        self.paused = False
        self._sweep_timer = None

    def watch_port(self, pause: Callable[[], None] | None,
                   resume: Callable[[], None] | None) -> None:
        """Give the gate the listening port's stop and start of accepting (None, None: no
        port any more, e.g. the master is stopping)."""
        if pause is None and self.paused:
            self.paused = False
            self._cancel_sweep()
        self._pause, self._resume = pause, resume

    # -- connections ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """How many connections have not logged in yet."""
        return self._pending_count

    def connected(self, conn) -> None:
        """A new connection: put it on probation, making room under the caps first."""
        host = conn.peer_host
        mine = self._pending.get(host)
        if mine is not None and len(mine) >= self.max_pending_per_host:
            self._evict(host, f"more than {self.max_pending_per_host} connections from {host} "
                              "have not logged in; closing the oldest")
        elif self._pending_count >= self.max_pending and (
                self._pause is None or self._age(next(iter(self._since))) >= STORM_GRACE):
            # (With a port to pause, nobody is closed while even the oldest is within its
            # grace: one read of the paused port may overshoot the cap by its accept burst.)
            busiest = max(self._pending, key=lambda h: len(self._pending[h]))
            self._evict(busiest, f"more than {self.max_pending} connections have not logged "
                                 f"in; closing the oldest from {busiest}, the busiest address")
        now = self.clock.seconds()
        timer = self.clock.callLater(self.login_timeout, self._timed_out, conn)
        self._pending.setdefault(host, OrderedDict())[conn] = timer
        self._since[conn] = now
        self._pending_count += 1
        if self._pause is not None and not self.paused and self._pending_count >= self.max_pending:
            self.paused = True
            self._pause()
            self._sweep_timer = self.clock.callLater(STORM_GRACE, self._sweep)

    def _age(self, conn) -> float:
        return self.clock.seconds() - self._since.get(conn, self.clock.seconds())

    @property
    def _resume_below(self) -> int:
        return max(1, self.max_pending * 3 // 4)

    def _sweep(self) -> None:
        """Accepting is paused: close connections on probation for STORM_GRACE s, oldest
        first, until there is room again."""
        self._sweep_timer = None
        if not self.paused:
            return
        for conn in list(self._since):
            if self._pending_count < self._resume_below or self._age(conn) < STORM_GRACE:
                break
            self.refuse(conn, f"did not log in within {STORM_GRACE:g} s while "
                              f"{self.max_pending} connections were logging in")
        if self.paused:
            self._sweep_timer = self.clock.callLater(STORM_GRACE, self._sweep)

    def _cancel_sweep(self) -> None:
        if self._sweep_timer is not None and self._sweep_timer.active():
            self._sweep_timer.cancel()
        self._sweep_timer = None

    def authenticated(self, conn) -> None:
        """Its password was right: off probation, no deadline, no byte budget."""
        self._forget(conn)

    def disconnected(self, conn) -> None:
        self._forget(conn)

    def over_budget(self, conn, received: int) -> bool:
        """True (and the connection refused) when `received` pre-login bytes are too many."""
        if received <= self.pre_login_bytes:
            return False
        self.refuse(conn, f"sent more than {self.pre_login_bytes} bytes without logging in")
        return True

    def refuse(self, conn, why: str) -> None:
        """Close `conn`, with a (throttled) log line naming its address and why."""
        self._forget(conn)
        self.log.warn(conn.peer_host, f"closing a connection from {conn.peer_host}: {why}")
        conn.refuse(why)

    def _timed_out(self, conn) -> None:
        mine = self._pending.get(conn.peer_host)
        if mine is None or conn not in mine:
            return
        mine[conn] = None  # the timer has fired; nothing to cancel
        self.refuse(conn, f"did not log in within {self.login_timeout:g} s")

    def _evict(self, host: str, why: str) -> None:
        oldest = next(iter(self._pending[host]))
        self.refuse(oldest, why)

    def _forget(self, conn) -> None:
        mine = self._pending.get(conn.peer_host)
        if mine is None or conn not in mine:
            return
        timer = mine.pop(conn)
        self._since.pop(conn, None)
        self._pending_count -= 1
        if timer is not None and timer.active():
            timer.cancel()
        if not mine:
            del self._pending[conn.peer_host]
        if self.paused and self._pending_count < self._resume_below:
            self.paused = False
            self._cancel_sweep()
            if self._resume is not None:
                self._resume()

    # -- password checks ----------------------------------------------------------------------

    def check(self, host: str, fn: Callable[[], bool]) -> defer.Deferred:
        """Run the password check `fn` for `host` when that address's turn comes; fire with its
        result. Fails with TooManyAttempts when too many checks from `host` already wait."""
        state = self._host(host)
        now = self.clock.seconds()
        if not state.waiting and now >= state.ready_at:
            return defer.succeed(self._run(host, state, fn))
        if len(state.waiting) >= MAX_QUEUED_CHECKS:
            return defer.fail(TooManyAttempts(
                f"{len(state.waiting)} logins from {host} already wait their turn"))
        d = defer.Deferred()
        state.waiting.append((fn, d))
        self._schedule(host, state)
        return d

    def failures(self, host: str) -> int:
        """Failed checks in a row from `host` (0 once forgotten)."""
        state = self._hosts.get(host)
        return state.failures if state is not None else 0

    def _host(self, host: str) -> _HostChecks:
        state = self._hosts.get(host)
        now = self.clock.seconds()
        if state is None:
            state = self._hosts[host] = _HostChecks()
            while len(self._hosts) > MAX_TRACKED_HOSTS:
                old_host, old = next(iter(self._hosts.items()))
                if old.waiting:
                    break  # never drop an address with checks waiting
                del self._hosts[old_host]
        elif state.failures and now - state.last_failure > FORGET_FAILURES_AFTER:
            state.failures = 0
        self._hosts.move_to_end(host)
        return state

    def _run(self, host: str, state: _HostChecks, fn) -> bool:
        ok = bool(fn())
        now = self.clock.seconds()
        if ok:
            state.failures = 0
            state.ready_at = now
        else:
            state.failures += 1
            state.last_failure = now
            state.ready_at = now + failure_delay(state.failures)
        if not state.waiting and not state.failures:
            self._hosts.pop(host, None)
        return ok

    def _schedule(self, host: str, state: _HostChecks) -> None:
        if state.timer is not None and state.timer.active():
            return
        delay = max(0.0, state.ready_at - self.clock.seconds())
        state.timer = self.clock.callLater(delay, self._next, host, state)

    def _next(self, host: str, state: _HostChecks) -> None:
        state.timer = None
        if not state.waiting:
            return
        fn, d = state.waiting.popleft()
        try:
            ok = self._run(host, state, fn)
        except Exception:
            d.errback()
        else:
            d.callback(ok)
        if state.waiting:
            self._hosts[host] = state
            self._schedule(host, state)

    def stop(self) -> None:
        """Cancel every timer (the master is stopping)."""
        for mine in self._pending.values():
            for timer in mine.values():
                if timer is not None and timer.active():
                    timer.cancel()
        self._pending.clear()
        self._since.clear()
        self._pending_count = 0
        self.watch_port(None, None)
        for state in self._hosts.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            for _, d in state.waiting:
                d.errback(TooManyAttempts("the master is stopping"))
            state.waiting.clear()
        self.log.stop()


class TooManyAttempts(Exception):
    """Too many logins from one address wait their turn; this one is refused at once."""
