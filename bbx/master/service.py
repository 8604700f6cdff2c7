"""MasterService: listen on one PB port for slaves and operators; start and stop cleanly."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from bbx import pidfile, startup
from bbx.pb.banana import FastBroker
from bbx.pb.endpoints import enable_tcp_keepalive, server_endpoint, with_backlog

from . import fdlimit, selection
from .admission import AttachQueue
from .builder import Builder, SlaveLoad
from .buildqueue import INTERRUPTED_REASON, BuildQueue
from .config import MasterConfig
from .control import ControlPerspective
from .farmstate import FarmState
from .gate import LoginGate
from .realm import Dispatcher
from .slave import SlavePerspective
from .store import Store, StoreError

log = Logger()

ENDPOINT_FILE = "master.endpoint"
PID_FILE = "master.pid"
HTTP_FILE = "master.http"  # the URL of /metrics and /healthz while serving (port 0 included)
# Everything the master creates is private (issue 8, case 5): the store and its -wal/-shm,
# the log, pid and endpoint files, uploads and their directories. SQLite gives its files the
# process's creation mode, so the umask is the one rule that covers them all.
PRIVATE_UMASK = 0o077


def _tighten_old_files(config, log_path: Path) -> None:
    """Make private the store and rotated logs an older master left readable (0644)."""
    from bbx import private

    paths = private.with_rotations(log_path)
    location = config.store_location
    if location.path is not None:
        paths += private.sqlite_files(location.path)
    changed = private.tighten(paths)
    if changed:
        log.warn("made {n} file(s) private (mode 0600) that an older bbx left readable by "
                 "others: {files}", n=len(changed), files=", ".join(changed))


def open_log(path: Path, binary: bool = False):
    """Open the master's log for appending, mode 0600 even if an older run left it wider."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    if binary:
        return os.fdopen(fd, "ab")
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


@implementer(IHandshakeListener)
class _Broker(FastBroker):
    """A Broker that notes when bytes last arrived (the slave's liveness) and keeps TCP alive.

    Until its login succeeds it is on probation at the factory's LoginGate (bbx/master/gate.py):
    a deadline, a byte budget, caps per address. FastBroker: Twisted's PB with a faster Banana
    codec and caps on each message (bbx/pb/banana.py), same wire format.
    """

    clock = None
    last_received = None
    gate: LoginGate | None = None
    authenticated = False
    _pre_login_received = 0

    @property
    def peer_host(self) -> str:
        """The peer's address without the port (what the gate counts by)."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        return str(host) if host is not None else "local"

    def mark_authenticated(self) -> None:
        """The password was right: the gate lets go of this connection."""
        if not self.authenticated:
            self.authenticated = True
            if self.gate is not None:
                self.gate.authenticated(self)

    def refuse(self, why: str) -> None:
        """The gate closes this connection (it has logged why)."""
        self.drop_connection()

    def peer_misbehaved(self, why: str) -> None:
        if self.gate is not None:
            self.gate.refuse(self, f"it sent what PB cannot accept ({why})")
        else:
            super().peer_misbehaved(why)

    def call_refused(self, message, why, peer_fault):
        if self.authenticated or self.gate is None:
            return super().call_refused(message, why, peer_fault)
        # Before login only `login` and `respond` make sense; anything failing is garbage.
        self.gate.refuse(self, f"its call to {message} failed before login ({why})")
        return True

    tls = False  # on an ssl: port (set by _ServerFactory)
    tls_done = False

    def handshakeCompleted(self):
        """The TLS layer finished the handshake (IHandshakeListener)."""
        self.tls_done = True

    def connectionLost(self, reason):
        if self.gate is not None:
            self.gate.disconnected(self)
        if self.tls and not self.tls_done:
            why = tls_failure(self.transport, reason)
            if why:
                line = f"TLS handshake with {_peer_host(self.transport)} failed: {why}"
                if self.gate is not None:
                    self.gate.log.warn(self.peer_host, line)  # throttled per address
                else:
                    log.warn("{line}", line=line)
        super().connectionLost(reason)

    def connectionMade(self):
        enable_tcp_keepalive(self.transport)
        # PB is request/answer with small messages: Nagle's algorithm plus the peer's delayed
        # ACK would hold many answers ~40 ms (measured: a trivial build took 65 ms, not 15).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        super().connectionMade()
        if self.gate is not None:
            self.gate.connected(self)

    def _sendFailureOrError(self, fail, requestID):
        # A refused login is already logged by the Dispatcher (name and peer, never the
        # password). Peers key on the exact remote type twisted.cred.error.UnauthorizedLogin
        # (docs/protocol.md §2.3), so it cannot become a pb.Error; skip Twisted's traceback log.
        # One try per connection: after the refusal is sent, the connection is closed.
        if fail.check(UnauthorizedLogin):
            self._sendError(fail, requestID)
            if not self.authenticated and self.transport is not None:
                self.transport.loseConnection()
        else:
            super()._sendFailureOrError(fail, requestID)

    def dataReceived(self, data):
        if self.clock is not None:
            self.last_received = self.clock.seconds()
        if not self.authenticated and self.gate is not None:
            self._pre_login_received += len(data)
            if self.gate.over_budget(self, self._pre_login_received):
                return
        super().dataReceived(data)


def _peer_host(transport) -> str:
    peer = transport.getPeer()
    return str(getattr(peer, "host", peer))


# OpenSSL's words for a first message that is not a TLS ClientHello (plain PB, HTTP).
_NOT_TLS = ("wrong version number", "http request", "unknown protocol")


def tls_failure(transport, reason) -> str | None:
    """Why a TLS handshake on the master's port did not finish, in a few words; None for a
    connection that never sent a ClientHello (a port probe, a TCP health check)."""
    from OpenSSL import SSL

    if reason.check(SSL.Error):
        errors = reason.value.args[0] if reason.value.args else None
        if isinstance(errors, list) and errors and isinstance(errors[-1], tuple):
            why = str(errors[-1][-1])  # OpenSSL's reason: 'tlsv1 alert unknown ca', ...
            return f"the client does not speak TLS ({why})" if why in _NOT_TLS else why
        return str(reason.value) or "a TLS error"
    try:
        hello = transport.getHandle().client_random()
    except Exception:
        return None
    if hello is None:
        return None
    return "the client hung up after receiving the certificate (it may not trust it)"


class _ServerFactory(pb.PBServerFactory):
    protocol = _Broker
    noisy = False

    def __init__(self, portal, clock, gate: LoginGate | None = None):
        # Buildbot serves tracebacks to its peers (docs/protocol.md §2.1); bbx does not need them.
        super().__init__(portal, unsafeTracebacks=False)
        self.clock = clock
        self.tls = False  # MasterService sets it for an ssl: listen string
        self.gate = gate
        self.brokers: set[_Broker] = set()

    def buildProtocol(self, addr):
        broker = super().buildProtocol(addr)
        broker.clock = self.clock
        broker.tls = self.tls
        broker.gate = self.gate
        self.brokers.add(broker)
        broker.notifyOnDisconnect(lambda: self.brokers.discard(broker))
        return broker


class PortInUse(Exception):
    """The listen address is taken by another process."""


def client_endpoint_for(address, listen: str) -> str:
    """The client endpoint string that reaches a bound server address."""
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    if isinstance(address, UNIXAddress):
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return "unix:path=" + name.replace(":", r"\:")
    # tls: rather than ssl: because a tls: client string checks the certificate by default.
    kind = "tls" if listen.split(":", 1)[0] in ("ssl", "tls") else "tcp"
    if isinstance(address, IPv6Address):
        host = address.host if address.host not in ("::", "") else "::1"
        return f"{kind}:host={host.replace(':', chr(92) + ':')}:port={address.port}"
    if isinstance(address, IPv4Address):
        host = address.host if address.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"{kind}:host={host}:port={address.port}"
    raise ValueError(f"cannot describe address {address!r}")


def listen_string(config: MasterConfig) -> str:
    """The listen endpoint string with master.toml's listen_backlog (Twisted's default of 50
    overflows in a storm of reconnecting slaves; an explicit backlog= in the string wins)."""
    return with_backlog(config.listen, config.listen_backlog)


class MasterService:
    """The running master: configured slaves and builders behind one listening PB port, the
    build queue, and the build-history store."""

    def __init__(self, config: MasterConfig, basedir, reactor):
        self.config = config
        self.basedir = Path(basedir)
        self.reactor = reactor
        self.load = SlaveLoad({s.name: s.max_builds for s in config.slaves})
        self.builders = {b.name: Builder(b, self.load) for b in config.builders}
        self.name = config.master_name
        self.store = Store(config.store_location, reactor, master=self.name,
                           close_on_shutdown=False)
        queue_class = BuildQueue
        if self.store.shared:
            from .sharedqueue import SharedBuildQueue as queue_class
        self.queue = queue_class(config, self.builders, self.load, self.store, reactor,
                                 self.basedir)
        self.admission = AttachQueue(reactor, config.max_attaching)
        index = selection.BuilderIndex(self.builders)
        self.slaves = {s.name: SlavePerspective(s, config, self.builders, reactor,
                                                admission=self.admission, index=index)
                       for s in config.slaves}
        self.farm = FarmState(self.store, self.slaves, reactor, self.queue.maybe_start)
        self.registry = None
        if self.store.shared:
            from .masters import MasterRegistry

            self.registry = MasterRegistry(self.store, reactor, self.name,
                                           config.heartbeat_timeout, self.slaves,
                                           endpoint=lambda: self.endpoint,
                                           on_declared_dead=self.queue.abandon_running)
        passwords = {s.name: s.password for s in config.slaves}
        passwords.update({u.name: u.password for u in config.control_users})
        self.gate = LoginGate(reactor, login_timeout=config.login_timeout)
        self.dispatcher = Dispatcher(
            self.slaves, passwords,
            lambda name: ControlPerspective(name, self) if self.config.control_user(name) else None,
            gate=self.gate)
        portal = Portal(self.dispatcher, [self.dispatcher])
        self.factory = _ServerFactory(portal, reactor, self.gate)
        self.factory.tls = config.listen.split(":", 1)[0].lower() == "ssl"
        self.port = None
        self.endpoint: str | None = None
        self._store_open = False
        self._reconfigurator = None

    def reconfig(self):
        """Re-read master.toml and apply it live (SIGHUP, `bbx master reconfig`;
        bbx/master/reconfig.py). Fires with an Outcome: ok and the one line it logged."""
        from .reconfig import Reconfigurator

        if self._reconfigurator is None:
            self._reconfigurator = Reconfigurator(self)
        return self._reconfigurator.run()

    @property
    def endpoint_file(self) -> Path:
        return self.basedir / ENDPOINT_FILE

    @defer.inlineCallbacks
    def start(self):
        """Open the store, pick up the queue, listen; write DIR/master.endpoint; fire with the
        client endpoint string.

        Errbacks with StoreError (one line) when the store cannot be used, PortInUse when the
        address is taken, ValueError for a bad listen string.
        """
        from twisted.internet.error import CannotListenError

        endpoint = server_endpoint(self.reactor, listen_string(self.config))
        budget = fdlimit.raise_nofile(fdlimit.needed_for(len(self.config.slaves)))
        if budget.problem():
            log.warn("{line}", line=budget.problem())
        elif budget.raised_from is not None:
            log.info("raised the open-file limit from {old} to {new} for {n} slaves",
                     old=budget.raised_from, new=budget.soft, n=len(self.config.slaves))
        yield self.store.open()
        self._store_open = True
        yield self.farm.start()  # before the queue: a paused slave must not get its requests
        yield self.queue.resume()
        try:
            self.port = yield endpoint.listen(self.factory)
        except CannotListenError as e:
            socket_error = getattr(e, "socketError", None)
            if socket_error is not None and getattr(socket_error, "errno", None) == errno.EADDRINUSE:
                raise PortInUse(str(getattr(e, "port", "?"))) from None
            raise
        port = self.port
        if hasattr(port, "stopReading") and hasattr(port, "startReading"):
            # In a storm the gate holds further connections in the listen queue.
            self.gate.watch_port(port.stopReading,
                                 lambda: port.startReading() if self.port is port else None)
        self.endpoint = client_endpoint_for(self.port.getHost(), self.config.listen)
        tmp = self.endpoint_file.with_suffix(".endpoint.tmp")
        tmp.write_text(self.endpoint + "\n")
        os.replace(tmp, self.endpoint_file)
        if self.registry is not None:
            yield self.registry.start()
            log.info("master {name} registered in {db} (heartbeat every {i:g} s; a silent "
                     "master is declared dead within {t:g} s)", name=self.name, db=self.store.path,
                     i=self.registry.interval, t=self.registry.timeout)
        log.info("listening on {endpoint}", endpoint=self.endpoint)
        return self.endpoint

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening, drop every connection (no slave update is taken after this),
        record running builds as interrupted, close the store, remove DIR/master.endpoint."""
        try:
            self.endpoint_file.unlink()
        except FileNotFoundError:
            pass
        self.queue.stop()
        self.farm.stop()
        if self.port is not None:
            port, self.port = self.port, None
            self.gate.watch_port(None, None)
            yield port.stopListening()
        for slave in self.slaves.values():
            slave.disconnect()
        for broker in list(self.factory.brokers):
            if broker.transport is not None:
                broker.transport.loseConnection()
        self.gate.stop()
        self.admission.stop()
        if self._store_open:
            self._store_open = False
            if self.registry is not None:
                yield self.registry.stop()
            try:
                cut = yield self.store.mark_interrupted(INTERRUPTED_REASON, requeue=True)
                if cut:
                    log.info("recorded {n} running build(s) as interrupted: {ids}", n=len(cut),
                             ids=", ".join(map(str, cut)))
            except StoreError as e:
                log.error("{e}", e=str(e))
            yield self.store.close()
        log.info("master stopped")

    # -- what the control perspective reads --------------------------------------------------

    @defer.inlineCallbacks
    def slave_summaries(self, connected: bool | None = None):
        """Every configured slave's summary (or only those attached here, connected=True, or
        not, False), with "master": the master it is attached to (this one, another one of a
        shared store, or None)."""
        others = {}
        if self.store.shared:
            from . import store_masters

            others = yield self.store.run_query(store_masters.attachments, write=False)
        out = []
        for slave in self.slaves.values():
            if connected is not None and (slave.link is not None) != connected:
                continue
            summary = slave.summary()
            if summary["connected"]:
                summary["master"] = self.name
            elif slave.name in others:
                summary["master"], summary["connected_since"] = others[slave.name]
            else:
                summary["master"] = None
            out.append(summary)
        return out

    def masters_listing(self):
        """Fires with the masters of the store: name, state, host, pid, endpoint,
        started_at, heartbeat_age, reason, this. A SQLite store has just this one."""
        if self.registry is not None:
            return self.registry.listing()
        import socket

        return defer.succeed([{"name": self.name, "state": "active", "host": socket.gethostname(),
                               "pid": os.getpid(), "endpoint": self.endpoint,
                               "started_at": None, "heartbeat_age": 0.0, "reason": None,
                               "this": True}])



def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class StartFailed(Exception):
    """The master could not start; str(error) is the operator's one line."""


def run(basedir, config: MasterConfig, *, to_terminal: bool, log_options=None,
        http: str | None = None) -> None:
    """Run a master in this process until SIGTERM/SIGINT; raise StartFailed if it cannot start.

    Logs go to DIR/<log> (and to the terminal when `to_terminal`; `log_options`: format and
    rotation, bbx/logs.py); DIR/master.pid exists while it runs. `http` (or config.http)
    serves /metrics and /healthz. Under systemd Type=notify it reports READY=1 once it
    listens and STOPPING=1 when it stops. SIGHUP re-reads master.toml and applies it
    (`MasterService.reconfig`, bbx/master/reconfig.py); it is never fatal.
    """
    import signal

    from twisted.internet import reactor

    from bbx import logs, systemd

    basedir = Path(basedir)
    server_endpoint(reactor, config.listen)  # ValueError for a bad string, before anything else
    http = http if http is not None else config.http
    if http:
        server_endpoint(reactor, http)
    os.umask(PRIVATE_UMASK)
    log_path = basedir / config.log
    try:
        log_file = logs.start(str(log_path), log_options or logs.LogOptions(), console=to_terminal)
        pidfile.write(basedir / PID_FILE)
    except OSError as e:
        raise StartFailed(f"cannot write {e.filename}: {e.strerror}; check the directory's "
                          f"permissions") from None
    pid_path = basedir / PID_FILE
    _tighten_old_files(config, log_path)
    service = MasterService(config, basedir, reactor)
    problem: list[str] = []

    def started_failed(failure):
        if failure.check(StoreError):
            problem.append(str(failure.value))
        elif failure.check(PortInUse):
            where = failure.value.args[0]
            problem.append(f"port {where} is already in use; pick another with --listen "
                           f"(or listen in {config.path}) or stop what holds it")
        else:
            problem.append(f"cannot listen on {config.listen!r}: {failure.getErrorMessage()}")
        log.error("{problem}", problem=problem[-1])
        reactor.stop()

    @defer.inlineCallbacks
    def begin():
        endpoint = yield service.start()
        if http:
            from bbx.web import url_of

            from . import http as web

            from twisted.internet.error import CannotListenError

            try:
                port = yield web.listen(service, http)
            except CannotListenError as e:
                if getattr(getattr(e, "socketError", None), "errno", None) == errno.EADDRINUSE:
                    raise PortInUse(f"{e.port} (http)") from None
                raise
            service.http_port = port
            url = url_of(port.getHost())
            _write_atomically(basedir / HTTP_FILE, url + "\n")
            log.info("serving /metrics and /healthz at {url}", url=url)
        systemd.notify("READY=1", f"STATUS=listening on {endpoint}")

    def sighup():
        log.info("SIGHUP: reloading {path}", path=str(config.path))
        service.reconfig()  # logs its outcome and writes DIR/master.reconfig; never errbacks

    def stopping():
        systemd.notify("STOPPING=1")
        (basedir / HTTP_FILE).unlink(missing_ok=True)
        port = getattr(service, "http_port", None)
        return port.stopListening() if port is not None else None

    reactor.callWhenRunning(lambda: begin().addErrback(started_failed))
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.addSystemEventTrigger("before", "shutdown", service.stop)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(sighup))
    log.info("master starting in {dir} (pid {pid})", dir=str(basedir), pid=os.getpid())
    startup.resume(freeze=False)
    try:
        reactor.run()
    finally:
        try:
            pidfile.remove_if_mine(pid_path)
        except OSError:
            pass
        log_file.flush()
    if problem:
        raise StartFailed(problem[0])
