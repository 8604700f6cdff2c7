"""Keep one slave connected to its master: connect, log in, keep alive, reconnect.

One small state machine (SlaveConnection) does that and nothing else:

    waiting --timer--> connecting --TCP up--> logging in --avatar--> attached
       ^                   |                      |                     |
       +---- backoff ------+----- refused --------+------ lost ---------+

* Every failure — refused TCP connect, wrong password, any other login error, a lost or
  silent connection — ends in the same place: log one line saying why, wait
  `policy(attempt)` seconds, try again. buildbot-worker exits on login errors other than a
  wrong password (e.g. "rejecting duplicate worker", docs/protocol.md §2.3); bbx keeps trying,
  because the other connection usually goes away and an exited slave needs a human.
* The attempt counter resets once a login succeeds.
* With several masters (masters sharing one farm through a PostgreSQL store), each try goes to
  the next master in the list once the current one has failed or gone: the slave attaches to
  the first that answers and stays there until that master is gone. The backoff is the same
  as with one master, counted across them.
* While attached, `perspective.keepalive()` is called every `keepalive` seconds
  (docs/protocol.md §4.4), and a watchdog (bbx/pb/liveness.py) drops the connection when nothing
  at all — the master's own calls, or its answers to ours — has been received for
  `deadline` seconds.
* The master calls the Bot (the mind) while our login call is still pending (§4.1);
  Twisted's broker services those calls as they arrive, so nothing special is needed.
* Connecting and logging in go through bbx's one login routine, bbx/pb/endpoints.login (the
  CLI's too), with a deadline on each; a session's `state` is the box of the diagram it is in
  (ended = waiting for the retry timer).
"""

from __future__ import annotations

import enum
import os
import random
from typing import Callable

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from bbx.pb import failures  # noqa: F401 - reads the failures a Python 2 (0.8) master sends
from bbx.pb.endpoints import (ClientBroker, KeepaliveClientFactory, LoginFailed, is_unauthorized,
                               login, remote_type)
from bbx.pb.liveness import KEEPALIVE_INTERVAL, SilenceWatchdog
from bbx.pb.tls import TlsVerifyError

log = Logger(namespace="bbx.slave")

# Reconnect policy: full-jitter exponential backoff. The first retry waits at most
# BACKOFF_BASE s (the brief asks for one within 2 s), doubling per attempt up to maxdelay.
BACKOFF_BASE = 1.0
BACKOFF_FACTOR = 2.0

# A TCP connect that has not completed in this long is abandoned and retried.
CONNECT_TIMEOUT = 30.0
# A login the master has not answered in this long is abandoned: the 0.8 slave's
# HUNG_CONNECTION_TIMEOUT (docs/protocol.md §2.3).
LOGIN_TIMEOUT = 120.0


def _greeting_timeout() -> float:
    try:
        value = float(os.environ.get("BBX_SLAVE_GREETING_TIMEOUT", ""))
    except ValueError:
        return CONNECT_TIMEOUT
    return value if value > 0 else CONNECT_TIMEOUT


# A master sends PB's version banner as soon as it accepts a connection (docs/protocol.md §1.1).
# Nothing at all for this long after the TCP connect means the kernel completed the
# handshake but the master never accepted it (its listen queue overflowed in a storm, or it
# is wedged): give up and retry with the backoff rather than wait out the login deadline.
# BBX_SLAVE_GREETING_TIMEOUT overrides it (tests/test_slave_connection.py).
GREETING_TIMEOUT = _greeting_timeout()
# stop() closes the connection politely; a master that has not acknowledged the close after
# this long is cut off, so a dead peer cannot hold up the slave's shutdown.
CLOSE_TIMEOUT = 5.0
# The reconnect ceiling when the caller gives no policy: create-worker's maxdelay default
# (bbx/slave/basedir.py DEFAULT_MAXDELAY, docs/protocol.md §7).
DEFAULT_MAXDELAY = 300.0


def backoff_ceiling(attempt: int, *, cap: float, base: float = BACKOFF_BASE,
                    factor: float = BACKOFF_FACTOR) -> float:
    """The most the `attempt`-th retry (0-based) may wait: min(cap, base * factor**attempt)."""
    # Exponent capped so huge attempt counts cannot overflow a float.
    return min(cap, base * factor ** min(attempt, 64))


def full_jitter_backoff(*, cap: float, base: float = BACKOFF_BASE, factor: float = BACKOFF_FACTOR,
                        uniform: Callable[[float, float], float] = random.uniform
                        ) -> Callable[[int], float]:
    """A backoff policy: attempt number (0-based) -> seconds to wait, uniform in [0, ceiling]."""

    def policy(attempt: int) -> float:
        return uniform(0.0, backoff_ceiling(attempt, cap=cap, base=base, factor=factor))

    policy.ceiling = lambda attempt: backoff_ceiling(attempt, cap=cap, base=base, factor=factor)
    return policy


class _Broker(ClientBroker):
    """A Broker that remembers when the master last sent anything, and why it went away.

    ClientBroker: FastBroker (Twisted's PB, faster Banana codec) that fails a pending login on loss.
    """

    on_receive: Callable[[], None] | None = None
    lost_reason: Failure | None = None

    def dataReceived(self, data):
        if self.on_receive is not None:
            self.on_receive()
        super().dataReceived(data)

    def connectionLost(self, reason):
        self.lost_reason = reason
        super().connectionLost(reason)


class _Factory(KeepaliveClientFactory):
    protocol = _Broker
    noisy = False  # one "Starting factory" line per retry is noise


class State(enum.Enum):
    """Where one session is in the diagram of the module docstring."""

    CONNECTING = "connecting"
    LOGGING_IN = "logging in"
    ATTACHED = "attached"
    ENDED = "ended"


class _Session:
    """One TCP connection attempt and whatever login follows on it."""

    def __init__(self, number: int):
        self.number = number
        self.state = State.CONNECTING
        self.broker: _Broker | None = None
        self.perspective = None  # the master's avatar, once ATTACHED
        self.end_reason: str | None = None
        self.end_kind = "lost"  # bbx/slave/state.py REASONS
        self.last_received = 0.0
        self.heard = False  # anything at all received from the master on this connection
        self.timers: list = []

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED


def failure_kind(failure: Failure) -> str:
    """What kind of failure ended a connect or login (bbx/slave/state.py REASONS)."""
    if failure.check(TlsVerifyError):
        return "untrusted"
    if is_unauthorized(failure):
        return "unauthorized"
    if failure.check(error.ConnectionRefusedError):
        return "refused"
    if failure.check(error.TimeoutError, defer.CancelledError, error.ConnectingCancelledError):
        return "timeout"
    if failure.check(error.ConnectionDone, error.ConnectionLost, pb.PBConnectionLost):
        return "lost"
    if failure.check(error.DNSLookupError, error.ConnectError):
        return "unreachable"
    if "duplicate" in remote_type(failure).lower() + failure.getErrorMessage().lower():
        return "duplicate"
    return "error"


def describe_failure(failure: Failure) -> str:
    """A short reason for a connect, login or connection-lost failure."""
    if failure.check(TlsVerifyError):
        return failure.getErrorMessage()
    if is_unauthorized(failure):
        return "unauthorized: the master refused this slave's name or password"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return f"cannot resolve the host ({failure.getErrorMessage()})"
    if failure.check(error.TimeoutError, defer.CancelledError, error.ConnectingCancelledError):
        return "timed out"
    if failure.check(error.ConnectionDone):
        return "the master closed the connection"
    if failure.check(error.ConnectionLost, pb.PBConnectionLost):
        return "the connection was lost"
    if failure.check(error.ConnectError):
        return failure.getErrorMessage()
    message = failure.getErrorMessage().strip().splitlines()
    kind = remote_type(failure).rpartition(".")[2]
    text = message[-1] if message else ""
    if kind:
        return f"{kind}: {text}" if text else kind
    return text or getattr(failure.type, "__name__", str(failure.type))


class SlaveConnection:
    """Keeps the Bot logged in to the master at `description`, forever, until stop().

    `description` is one client endpoint string, or a list of them: then each retry goes to
    the next master after the one that failed or went away. `bot` is the mind (a
    pb.Referenceable with `connection_lost(why)`); `policy(attempt)` gives the seconds to wait
    before the next try; time comes from `reactor`.
    """

    def __init__(self, reactor, description, name: str, password: str, bot, *,
                 keepalive: float = KEEPALIVE_INTERVAL, deadline: float | None = None,
                 policy: Callable[[int], float] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, login_timeout: float = LOGIN_TIMEOUT,
                 tls=None):
        self.reactor = reactor
        self.tls = tls  # a bbx.pb.tls.TlsTrust: how a tls: master's certificate is checked
        self.descriptions = [description] if isinstance(description, str) else list(description)
        if not self.descriptions:
            raise ValueError("no master to connect to")
        self._master_index = 0
        self.name = name
        self.password = password
        self.bot = bot
        self.keepalive = keepalive
        self.deadline = deadline
        self.policy = policy or full_jitter_backoff(cap=DEFAULT_MAXDELAY)
        self.connect_timeout = connect_timeout
        self.login_timeout = login_timeout
        self.attempt = 0  # failures since the last successful login
        self._session: _Session | None = None
        self._sessions = 0
        self._retry_timer = None
        self._stopping = False
        self._stopped: defer.Deferred | None = None
        # on_state(state, reason, detail, attempt): each change, for DIR/slave.state.
        self.on_state: Callable[[str, str, str, int], None] | None = None

    # -- public ------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """The endpoint string of the master being tried or attached to."""
        return self.descriptions[self._master_index]

    @property
    def perspective(self):
        """The master's avatar while attached, else None."""
        s = self._session
        return s.perspective if s is not None and s.state is State.ATTACHED else None

    @property
    def attached(self) -> bool:
        return self.perspective is not None

    def start(self) -> None:
        """Begin connecting now."""
        self._stopping = False
        self._connect()

    def stop(self) -> defer.Deferred:
        """Stop trying; drop the connection. Fires once it is closed."""
        self._stopping = True
        if self._retry_timer is not None and self._retry_timer.active():
            self._retry_timer.cancel()
        self._retry_timer = None
        s = self._session
        if s is None or s.ended or s.broker is None:
            if s is not None and not s.ended:
                self._end(s, "stopping")
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        d = self._stopped
        s.broker.transport.loseConnection()
        # A peer that never acknowledges the close must not hold up the shutdown.
        self.reactor.callLater(CLOSE_TIMEOUT, self._abort_if_open, s)
        return d

    # -- the state machine -------------------------------------------------------------------

    def _state(self, state: str, reason: str = "", detail: str = "") -> None:
        if self.on_state is not None:
            self.on_state(state, reason, detail, self.attempt)

    def _connect(self) -> None:
        self._retry_timer = None
        if self._stopping:
            return
        self._sessions += 1
        self._state("connecting")
        s = _Session(self._sessions)
        self._session = s
        self._run(s)

    @defer.inlineCallbacks
    def _run(self, s: _Session):
        """CONNECTING -> LOGGING_IN -> ATTACHED, through bbx's one login routine."""
        try:
            perspective, _ = yield login(
                self.reactor, self.description, self.name, self.password, self.bot,
                timeout=self.connect_timeout, login_timeout=self.login_timeout,
                factory=_Factory(), connected=lambda broker: self._connected(s, broker),
                tls=self.tls)
        except ValueError as e:  # a malformed connection string
            self._end(s, f"cannot connect to {self.description}: {e}")
            return
        except LoginFailed as e:
            if not s.ended:
                s.end_kind = ("timeout" if e.timed_out else
                              failure_kind(e.failure) if e.failure is not None else "error")
                self._end(s, self._login_failed(e))
            return
        if s.ended or self._stopping:
            if s.broker is not None:
                s.broker.transport.loseConnection()
            return
        s.state = State.ATTACHED
        s.perspective = perspective
        self.attempt = 0
        log.info("attached to the master at {where} as {name}", where=self.description, name=self.name)
        self._state("attached")
        if self.keepalive and self.keepalive > 0:
            s.timers.append(self.reactor.callLater(self.keepalive, self._send_keepalive, s))

    def _connected(self, s: _Session, broker: _Broker) -> None:
        """The TCP connection is up: watch it, then the login goes out (LOGGING_IN)."""
        if s.ended or self._stopping:
            broker.transport.loseConnection()
            return
        s.state = State.LOGGING_IN
        s.broker = broker
        broker.on_receive = lambda: self._heard(s)
        broker.notifyOnDisconnect(lambda: self._lost(s))
        self._received(s)
        s.timers.append(self.reactor.callLater(GREETING_TIMEOUT, self._no_greeting, s))
        log.info("connected to {where}; logging in as {name}", where=self.description, name=self.name)
        self._state("logging in")
        if self.deadline:
            self._arm_watchdog(s)

    def _login_failed(self, e: LoginFailed) -> str:
        reason = describe_failure(e.failure) if e.failure is not None else e.reason
        if e.untrusted or (e.failure is not None and e.failure.check(TlsVerifyError)):
            return f"refused the master at {self.description}: {reason}"
        if e.stage == "connect":
            return f"cannot connect to {self.description}: {reason}"
        if e.timed_out:
            return (f"the master at {self.description} did not answer the login within "
                    f"{self.login_timeout:.0f} s")
        if e.failure is not None and e.failure.check(error.ConnectionDone, error.ConnectionLost,
                                                     pb.PBConnectionLost):
            return f"the connection to {self.description} closed during login ({reason})"
        # A refusal or any other login error. buildbot-worker exits on the latter
        # (docs/protocol.md §2.3); we keep trying.
        return f"login to {self.description} as {self.name} failed: {reason}"

    def _received(self, s: _Session) -> None:
        s.last_received = self.reactor.seconds()

    def _heard(self, s: _Session) -> None:
        s.heard = True
        self._received(s)

    def _no_greeting(self, s: _Session) -> None:
        if s.ended or s.heard or s.broker is None:
            return
        s.end_kind = "timeout"
        s.end_reason = (f"the master at {self.description} took the TCP connection but sent "
                        f"nothing within {GREETING_TIMEOUT:g} s (not accepted: its listen queue "
                        "may be full); dropping it")
        s.broker.transport.abortConnection()

    def _arm_watchdog(self, s: _Session) -> None:
        watchdog = SilenceWatchdog(self.reactor, self.deadline, lambda: s.last_received,
                                   lambda silent: self._silent(s, silent))
        watchdog.start()
        s.timers.append(watchdog)

    def _silent(self, s: _Session, silent: float) -> None:
        if s.ended:
            return
        s.end_kind = "timeout"
        s.end_reason = (f"the master at {self.description} sent nothing for {silent:.0f} s "
                        f"(deadline {self.deadline:.0f} s); dropping the connection")
        s.broker.transport.abortConnection()

    def _send_keepalive(self, s: _Session) -> None:
        if s.state is not State.ATTACHED:
            return
        d = s.perspective.callRemote("keepalive")

        def failed(f):
            if not s.ended:
                log.warn("keepalive call failed: {why}", why=describe_failure(f))

        def next_one(_):
            if not s.ended:
                s.timers.append(self.reactor.callLater(self.keepalive, self._send_keepalive, s))

        # Runs are serialized: the next one is scheduled only once this one is answered; a
        # master that never answers is caught by the watchdog.
        d.addErrback(failed)
        d.addBoth(next_one)

    def _lost(self, s: _Session) -> None:
        if s.ended:
            if self._stopped is not None and s is self._session:
                self._fire_stopped()
            return
        reason = s.end_reason
        if reason is None:
            lost = s.broker.lost_reason
            why = describe_failure(lost) if lost else "connection lost"
            if lost is not None and lost.check(TlsVerifyError):
                # Never attached: the handshake was refused before any PB byte was sent.
                reason = f"refused the master at {self.description}: {why}"
                s.end_kind = "untrusted"
            elif s.state is State.ATTACHED:
                reason = f"lost the connection to {self.description}: {why}"
            else:
                reason = f"the connection to {self.description} closed during login ({why})"
        self._end(s, reason)
        if self._stopped is not None:
            self._fire_stopped()

    def _abort_if_open(self, s: _Session) -> None:
        if s.broker is not None and s.broker.transport is not None and not s.ended:
            s.broker.transport.abortConnection()

    def _fire_stopped(self) -> None:
        d, self._stopped = self._stopped, None
        if d is not None:
            d.callback(None)

    def _end(self, s: _Session, reason: str) -> None:
        """Any state -> ENDED: stop the session's timers, kill commands, plan the retry."""
        if s.ended:
            return
        was_attached = s.state is State.ATTACHED
        s.state = State.ENDED
        s.end_reason = reason
        for t in s.timers:
            if isinstance(t, SilenceWatchdog):
                t.stop()
            elif t.active():
                t.cancel()
        s.timers = []
        s.perspective = None
        if was_attached:
            try:
                self.bot.connection_lost(reason)
            except Exception:
                log.failure("while stopping commands after a lost connection")
        if self._stopping:
            log.info("disconnected from {where}", where=self.description)
            self._state("stopped", "", reason)
            return
        delay = self.policy(self.attempt)
        ceiling = getattr(self.policy, "ceiling", None)
        bound = f", at most {ceiling(self.attempt):g} s" if ceiling else ""
        self.attempt += 1
        following = (self._master_index + 1) % len(self.descriptions)
        if following != self._master_index:
            # This master failed or is gone: the next try goes to the next one.
            bound += f", next master {self.descriptions[following]}"
        log.info("{reason}; retrying in {delay:.1f} s (attempt {n}{bound})", reason=reason,
                 delay=delay, n=self.attempt, bound=bound)
        self._state("disconnected", s.end_kind, reason)
        self._master_index = following
        self._retry_timer = self.reactor.callLater(delay, self._connect)
