"""The slave role: connect to a master, obey it, run its commands.

    basedir.py     create / load the slave directory (slave.toml, info/)
    connection.py  stay logged in: connect, log in, keepalive, reconnect with backoff
    bot.py         the Bot the master calls (info, builders, print, shutdown)
    builder.py     one SlaveBuilder per builder; runs the master's commands
    commands/      the commands themselves (and the allow-list, commands/registry.py)
    containment.py where commands' processes are kept (cgroups, subreaper) and the guard
                   that kills them if the slave dies (guard.py, cgroup.py, proctree.py)
    runprocess.py  one child process: output, limits, kills (spawn.py, shellargs.py,
                   logfiles.py, redact.py)

`Slave` wires them together for one process; `run` is what `bbx slave start` calls.
Heavy imports stay inside functions so that `import bbx.slave.basedir` stays cheap.
"""

from __future__ import annotations

import os

# The URL of /metrics and /healthz while the slave serves them (--http; port 0 included).
HTTP_NAME = "slave.http"
# A graceful stop waits this long for killed commands to report before giving up on them.
STOP_GRACE = 10.0
# allow_shutdown = "file": how often DIR/shutdown.stamp is checked (docs/protocol.md §4.5).
SHUTDOWN_STAMP_POLL = 10.0


class Slave:
    """One running slave: a Bot, its connection, and the ways to ask it to stop."""

    def __init__(self, config, reactor, *, policy=None, guard: bool = True):
        from bbx.pb.secrets import SecretNames
        from bbx.slave.basedir import LOG_NAME
        from bbx.slave.bot import Bot
        from bbx.slave.commands.base import CommandContext
        from bbx.slave.connection import SlaveConnection, full_jitter_backoff
        from bbx.slave.containment import Containment, slave_key

        self.config = config
        self.reactor = reactor
        self.containment = Containment(reactor, key=slave_key(config.basedir), cgroups=config.cgroup,
                                       guard=guard, log_path=config.path(LOG_NAME))
        context = CommandContext(slave_name=config.name, allowed=config.commands,
                                 secret_names=SecretNames(config.redact),
                                 containment=self.containment)
        self.bot = Bot(config.basedir, reactor, shutdown=self._stop_reactor, context=context,
                       tags=config.tags)
        self.connection = SlaveConnection(
            reactor, list(config.masters), config.name, config.password, self.bot,
            keepalive=config.keepalive, deadline=config.keepalive_deadline,
            policy=policy or full_jitter_backoff(cap=config.maxdelay), tls=config.tls)
        self._stamp_poll = None
        self._stamp_mtime = None
        self.state = None  # DIR/slave.state, when run() keeps one
        self.attaches = 0

    def keep_state(self) -> None:
        """Write DIR/slave.state at every connection change, and tell systemd and the
        metrics (bbx/slave/state.py, bbx/systemd.py, bbx/slave/metrics.py)."""
        from bbx.slave.state import StateFile

        self.state = StateFile(self.config.basedir, self.config.connection, self.reactor)
        self.connection.on_state = self._state_changed

    def _state_changed(self, state: str, reason: str, detail: str, attempt: int) -> None:
        from bbx import systemd
        from bbx.slave import metrics

        if state == "attached":
            self.attaches += 1
            if self.attaches > 1:
                metrics.RECONNECTS.inc()
        elif state == "disconnected" and reason:
            metrics.CONNECT_FAILURES.inc(reason=reason)
        if self.state is not None:
            self.state.master = self.connection.description  # several masters: the one in play
            self.state.write(state, reason, detail, attempt)
        systemd.status(f"{state}: {detail}" if detail else f"{state} ({self.connection.description})")

    def start(self) -> None:
        from twisted.logger import Logger

        log = Logger(namespace="bbx.slave")
        log.info("slave {name} starting in {dir}; master {where}", name=self.config.name,
                 dir=self.config.basedir, where=" or ".join(self.config.masters))
        if self.config.commands is not None:
            log.info("commands allowed: {names}", names=", ".join(self.config.commands))
        self.containment.start()
        if self.config.allow_shutdown == "file":
            from twisted.internet.task import LoopingCall

            self._stamp_mtime = self._stamp()
            self._stamp_poll = LoopingCall(self._check_stamp)
            self._stamp_poll.clock = self.reactor
            self._stamp_poll.start(SHUTDOWN_STAMP_POLL, now=False)
        self.connection.start()

    def _stamp(self):
        from bbx.slave.basedir import SHUTDOWN_STAMP

        try:
            return os.stat(self.config.path(SHUTDOWN_STAMP)).st_mtime
        except OSError:
            return None

    def _check_stamp(self) -> None:
        mtime = self._stamp()
        if mtime is not None and mtime != self._stamp_mtime:
            self._stamp_mtime = mtime
            self.request_shutdown("DIR/shutdown.stamp was touched")

    def request_shutdown(self, why: str) -> None:
        """Ask the master for a graceful shutdown (docs/protocol.md §4.5); stop now if not attached."""
        from twisted.logger import Logger

        log = Logger(namespace="bbx.slave")
        perspective = self.connection.perspective
        if perspective is None:
            log.info("graceful shutdown requested ({why}); not attached, stopping now", why=why)
            self._stop_reactor()
            return
        log.info("graceful shutdown requested ({why}); asking the master", why=why)
        d = perspective.callRemote("shutdown")

        def failed(f):
            if f.check(AttributeError) or "AttributeError" in str(f.type):
                log.warn("the master does not support slave-initiated shutdown; stopping now")
            else:
                log.warn("the master did not accept the shutdown request ({why}); stopping now",
                         why=f.getErrorMessage())
            self._stop_reactor()

        d.addErrback(failed)

    def stop(self):
        """Kill running commands and disconnect; fires when done (bounded by STOP_GRACE)."""
        from twisted.internet import defer
        from twisted.logger import Logger

        if self._stamp_poll is not None and self._stamp_poll.running:
            self._stamp_poll.stop()
        killed = self.bot.stop_all("the slave is stopping")
        timeout = defer.Deferred()
        timer = self.reactor.callLater(STOP_GRACE, timeout.callback, None)
        first = defer.DeferredList([killed, timeout], fireOnOneCallback=True, consumeErrors=True)

        def disconnect(_):
            if timer.active():
                timer.cancel()
            return self.connection.stop()

        first.addCallback(disconnect)
        # Last, once the commands are dead: what they left behind, the cgroups, the guard.
        first.addBoth(lambda _: self.containment.stop())
        first.addErrback(lambda f: Logger(namespace="bbx.slave").failure("cleaning up failed", f))
        return first

    def _stop_reactor(self) -> None:
        from twisted.internet import error

        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def start_logging(log_path: str, *, console: bool = True, options=None):
    """Log (info and up) to `log_path`, and to stdout when `console` (bbx/logs.py)."""
    from bbx.logs import LogOptions, start

    return start(log_path, options or LogOptions(), console=console)


def run(config, *, console: bool = True, log_options=None, http: str | None = None) -> int:
    """Run a slave in this process until it is stopped; return the exit status.

    Writes DIR/slave.pid while running and DIR/slave.state at each connection change, logs to
    DIR/slave.log (and the terminal; `log_options`: format and rotation), serves /metrics and
    /healthz on `http` when given, applies the configured umask, tells systemd READY=1 once
    started (Type=notify), stops cleanly on SIGTERM / SIGINT, and on SIGHUP asks the master
    for a graceful shutdown when allow_shutdown = "signal" (else stops cleanly).
    """
    import signal

    from twisted.internet import reactor

    from bbx import pidfile, systemd
    from bbx.slave.basedir import LOG_NAME, PID_NAME

    if config.umask is not None:
        os.umask(config.umask)
    log_file = start_logging(config.path(LOG_NAME), console=console, options=log_options)
    _tighten_old_logs(config.path(LOG_NAME))
    pid_path = config.path(PID_NAME)
    pidfile.write(pid_path)
    slave = Slave(config, reactor)
    slave.keep_state()
    reactor.addSystemEventTrigger("before", "shutdown", slave.stop)
    reactor.addSystemEventTrigger("before", "shutdown", systemd.notify, "STOPPING=1")
    if config.allow_shutdown == "signal":
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
            slave.request_shutdown, "SIGHUP received"))
    else:
        # SIGHUP's default action kills the process on the spot, leaving commands running and a
        # stale pid file behind (e.g. when the terminal of a foreground slave closes).
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(slave._stop_reactor))
    problem: list[str] = []

    def begin():
        from twisted.logger import Logger

        slave.start()
        if http:
            from bbx.slave.http import listen

            d = listen(slave, reactor, http)

            def serving(port):
                from bbx.web import url_of

                url = url_of(port.getHost())
                _write(config.path(HTTP_NAME), url + "\n")
                Logger(namespace="bbx.slave").info("serving /metrics and /healthz at {url}", url=url)

            def failed(f):
                problem.append(f"cannot serve HTTP on {http!r}: {f.getErrorMessage()}")
                Logger(namespace="bbx.slave").error("{problem}", problem=problem[-1])
                slave._stop_reactor()

            d.addCallbacks(serving, failed)
        systemd.notify("READY=1", f"STATUS=connecting to {config.connection}")

    reactor.callWhenRunning(begin)
    from bbx import startup

    startup.resume(freeze=False)
    try:
        reactor.run()
    finally:
        try:
            pidfile.remove_if_mine(pid_path)
            if http:
                os.unlink(config.path(HTTP_NAME))
        except OSError:
            pass
        from twisted.logger import Logger

        Logger(namespace="bbx.slave").info("slave stopped")
        if slave.state is not None:
            slave.state.write("stopped", "", "the slave stopped")
        log_file.flush()
    return 2 if problem else 0


def _tighten_old_logs(log_path: str) -> None:
    """Make private the rotated logs an older slave left readable (0644); the current log is
    made 0600 when it is opened (bbx/logs.py)."""
    from twisted.logger import Logger

    from bbx import private

    changed = private.tighten(private.with_rotations(log_path))
    if changed:
        Logger(namespace="bbx.slave").warn(
            "made {n} file(s) private (mode 0600) that an older bbx left readable by others: "
            "{files}", n=len(changed), files=", ".join(changed))

