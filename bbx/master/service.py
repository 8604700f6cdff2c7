"""MasterService: listen on one PB port for slaves and operators; start and stop cleanly."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb

from bbx import pidfile
from bbx.pb.banana import FastBroker
from bbx.pb.endpoints import enable_tcp_keepalive, server_endpoint

from .builder import Builder, SlaveLoad
from .buildqueue import INTERRUPTED_REASON, BuildQueue
from .config import MasterConfig
from .control import ControlPerspective
from .realm import Dispatcher
from .slave import SlavePerspective
from .store import Store, StoreError

log = Logger()

ENDPOINT_FILE = "master.endpoint"
PID_FILE = "master.pid"


class _Broker(FastBroker):
    """A Broker that notes when bytes last arrived (the slave's liveness) and keeps TCP alive.

    FastBroker: Twisted's PB with a faster Banana codec (bbx/pb/banana.py), same wire format.
    """

    clock = None
    last_received = None

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

    def _sendFailureOrError(self, fail, requestID):
        # A refused login is already logged by the Dispatcher (name and peer, never the
        # password). Peers key on the exact remote type twisted.cred.error.UnauthorizedLogin
        # (PROTOCOL.md §2.3), so it cannot become a pb.Error; skip Twisted's traceback log.
        if fail.check(UnauthorizedLogin):
            self._sendError(fail, requestID)
        else:
            super()._sendFailureOrError(fail, requestID)

    def dataReceived(self, data):
        if self.clock is not None:
            self.last_received = self.clock.seconds()
        super().dataReceived(data)


class _ServerFactory(pb.PBServerFactory):
    protocol = _Broker
    noisy = False

    def __init__(self, portal, clock):
        # Buildbot serves tracebacks to its peers (PROTOCOL.md §2.1); bbx does not need them.
        super().__init__(portal, unsafeTracebacks=False)
        self.clock = clock
        self.brokers: set[_Broker] = set()

    def buildProtocol(self, addr):
        broker = super().buildProtocol(addr)
        broker.clock = self.clock
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
        self.slaves = {s.name: SlavePerspective(s, config, self.builders, reactor) for s in config.slaves}
        self.registry = None
        if self.store.shared:
            from .masters import MasterRegistry

            self.registry = MasterRegistry(self.store, reactor, self.name,
                                           config.heartbeat_timeout, self.slaves,
                                           endpoint=lambda: self.endpoint,
                                           on_declared_dead=self.queue.abandon_running)
        passwords = {s.name: s.password for s in config.slaves}
        passwords.update({u.name: u.password for u in config.control_users})
        control_names = {u.name for u in config.control_users}
        self.dispatcher = Dispatcher(
            self.slaves, passwords,
            lambda name: ControlPerspective(name, self) if name in control_names else None)
        portal = Portal(self.dispatcher, [self.dispatcher])
        self.factory = _ServerFactory(portal, reactor)
        self.port = None
        self.endpoint: str | None = None
        self._store_open = False

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

        endpoint = server_endpoint(self.reactor, self.config.listen)
        yield self.store.open()
        self._store_open = True
        yield self.queue.resume()
        try:
            self.port = yield endpoint.listen(self.factory)
        except CannotListenError as e:
            socket_error = getattr(e, "socketError", None)
            if socket_error is not None and getattr(socket_error, "errno", None) == errno.EADDRINUSE:
                raise PortInUse(str(getattr(e, "port", "?"))) from None
            raise
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
        if self.port is not None:
            port, self.port = self.port, None
            yield port.stopListening()
        for slave in self.slaves.values():
            slave.disconnect()
        for broker in list(self.factory.brokers):
            if broker.transport is not None:
                broker.transport.loseConnection()
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
    def slave_summaries(self):
        """Every configured slave's summary, with "master": the master it is attached to
        (this one, another one of a shared store, or None)."""
        others = {}
        if self.store.shared:
            from . import store_masters

            others = yield self.store.run_query(store_masters.attachments, write=False)
        out = []
        for slave in self.slaves.values():
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



class StartFailed(Exception):
    """The master could not start; str(error) is the operator's one line."""


def run(basedir, config: MasterConfig, *, to_terminal: bool) -> None:
    """Run a master in this process until SIGTERM/SIGINT; raise StartFailed if it cannot start.

    Logs go to DIR/<log> (and to the terminal when `to_terminal`); DIR/master.pid exists while
    it runs.
    """
    import sys

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    basedir = Path(basedir)
    server_endpoint(reactor, config.listen)  # ValueError for a bad string, before anything else
    log_path = basedir / config.log
    try:
        log_file = open(log_path, "a", encoding="utf-8", buffering=1)
        (basedir / PID_FILE).write_text(f"{os.getpid()}\n")
    except OSError as e:
        raise StartFailed(f"cannot write {e.filename}: {e.strerror}; check the directory's "
                          f"permissions") from None
    observers = [textFileLogObserver(log_file)]
    if to_terminal:
        observers.append(textFileLogObserver(sys.stdout))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    pid_path = basedir / PID_FILE
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

    def begin():
        d = service.start()
        d.addErrback(started_failed)

    reactor.callWhenRunning(begin)
    reactor.addSystemEventTrigger("before", "shutdown", service.stop)
    log.info("master starting in {dir} (pid {pid})", dir=str(basedir), pid=os.getpid())
    try:
        reactor.run()
    finally:
        try:
            if pidfile.read(pid_path) == os.getpid():
                pid_path.unlink()
        except FileNotFoundError:
            pass
        log_file.flush()
    if problem:
        raise StartFailed(problem[0])
