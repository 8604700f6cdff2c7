"""SlavePerspective: one configured slave, its attach sequence, liveness and detach.

The attach sequence runs inside the realm's requestAvatar, before the login answer goes back
(PROTOCOL.md §4.1): a real buildbot-worker only reports a successful start once it has seen
"attached", and treats any error raised here as fatal (§2.3).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.spread import pb

from bbx.pb import dialect
from bbx.pb.dialect import Dialect
from bbx.pb.liveness import SilenceWatchdog

from .builder import PING_TIMEOUT, Builder, SlaveBuilder
from .config import MasterConfig, SlaveConfig

log = Logger()

# Duplicate arbitration gives the old connection 10 s to answer (PROTOCOL.md §2.4 PING_TIMEOUT).
DUPLICATE_PING_TIMEOUT = PING_TIMEOUT
# Sent to the newcomer while the old connection is checked, as 0.8 masters do (§2.4).
DUPLICATE_NEW_MESSAGE = "master already has a connection named '{name}' - checking its liveness"
# The 0.8 fallback notice a 4.3 master prints before using getSlaveInfo (§4.1 step 2.3).
LEGACY_NOTICE = "buildbot-slave detected, failing back to deprecated buildslave API."


def _is_no_such_method(failure) -> bool:
    return bool(failure.check(dialect.NO_SUCH_METHOD, "twisted.spread.flavors.NoSuchMethod"))


class RejectedDuplicate(pb.Error, RuntimeError):
    """Raised into a newcomer's login when the slave of that name is alive elsewhere."""


class SlaveLink:
    """The state of one connection of a slave: the Bot (mind), its info and builder refs."""

    def __init__(self, broker, mind, reactor):
        self.broker = broker
        self.mind = mind
        self.reactor = reactor
        self.info: dict[str, Any] = {}
        self.dialect: Dialect | None = None
        self.connected_since = reactor.seconds()
        self.builder_refs: dict[str, Any] = {}
        self.slave_builders: dict[str, SlaveBuilder] = {}
        self.gone = False
        self.graceful = False  # the slave asked to shut down: it gets no new builds (§4.5)
        self.loops: list[task.LoopingCall] = []
        peer = broker.transport.getPeer() if broker.transport else None
        self.peer = peer_text(peer)

    @property
    def commands(self) -> dict:
        return self.info.get("worker_commands") or {}

    @property
    def last_message(self) -> float:
        return getattr(self.broker, "last_received", None) or self.connected_since

    def drop(self) -> None:
        transport = self.broker.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()


def peer_text(peer) -> str:
    """A peer address for the log: host:port, [v6]:port or unix:path."""
    if peer is None:
        return "?"
    host = getattr(peer, "host", None)
    if host is not None:
        return f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"
    name = getattr(peer, "name", None)
    return f"unix:{name.decode() if isinstance(name, bytes) else name or '?'}"


class SlavePerspective(pb.Avatar):
    """The avatar of one configured slave: what the slave's perspective calls reach.

    There is one per configured slave; `link` is its current connection (None while detached).
    """

    def __init__(self, config: SlaveConfig, master_config: MasterConfig,
                 builders: dict[str, Builder], reactor):
        self.config = config
        self.master_config = master_config
        self.builders = {n: b for n, b in builders.items() if config.name in b.config.slaves}
        self.reactor = reactor
        self.link: SlaveLink | None = None
        self._lock = defer.DeferredLock()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def shutting_down(self) -> bool:
        """True while the connected slave waits for a graceful shutdown: no new work for it."""
        return self.link is not None and self.link.graceful

    # -- what the slave calls -------------------------------------------------------------

    def perspective_keepalive(self):
        """The slave's periodic keepalive (no arguments); returns None. Only proves liveness."""
        return None

    def perspective_shutdown(self):
        """The slave asks to shut down gracefully (no arguments); returns None.

        As a Buildbot master does (PROTOCOL.md §4.5): the slave gets no new builds or commands,
        and once everything running on it — whole builds, not just the current step — has
        ended, the master calls `Bot.shutdown()`.
        """
        link = self.link
        if link is None:
            return None
        log.info("slave {name} asked to shut down; it gets no new work", name=self.name)
        link.graceful = True
        running = []
        for sb in link.slave_builders.values():
            if sb.build is not None:
                running.append(sb.build.finished)
            elif sb.command is not None:
                running.append(sb.command.done)

        def stop(_=None):
            if not link.gone:
                log.info("slave {name} is idle; telling it to shut down", name=self.name)
                d = link.mind.callRemote("shutdown")
                d.addErrback(lambda f: None)  # the slave stopping mid-call is success (§4.5)
        if running:
            defer.DeferredList(running, consumeErrors=True).addCallback(stop)
        else:
            stop()
        return None

    # -- attach -----------------------------------------------------------------------------

    def attach(self, mind, broker):
        """Run the attach sequence for a new connection; fire when the slave may get its avatar."""
        return self._lock.run(self._attach, mind, broker)

    @defer.inlineCallbacks
    def _attach(self, mind, broker):
        link = SlaveLink(broker, mind, self.reactor)
        if self.link is not None:
            yield self._arbitrate(link)
        yield mind.callRemote("print", message=dialect.ATTACHED_MESSAGE)
        yield self._fetch_info(link)
        wanted = [(name, b.config.builddir) for name, b in self.builders.items()]
        refs = yield mind.callRemote("setBuilderList", wanted)
        link.builder_refs = dict(refs or {})
        for name, ref in link.builder_refs.items():
            builder = self.builders.get(name)
            if builder is None:
                continue
            link.slave_builders[name] = SlaveBuilder(builder, self, ref, self.reactor)
        if link.dialect is Dialect.SLAVE:
            for sb in link.slave_builders.values():
                yield sb.remote.callRemote("setMaster", sb)
                yield sb.remote.callRemote("print", dialect.ATTACHED_MESSAGE)
        for _ in link.slave_builders:
            yield mind.callRemote("print", message=dialect.ATTACHED_MESSAGE)
        if not link.slave_builders:
            yield mind.callRemote("print", message=dialect.ATTACHED_MESSAGE)
        if broker.disconnected:
            raise pb.PBConnectionLost("the slave went away while attaching")
        self._accept(link)
        return link

    @defer.inlineCallbacks
    def _arbitrate(self, new: SlaveLink):
        """Two connections claim this name: keep the old one if it answers (PROTOCOL.md §2.4)."""
        old = self.link
        log.info("slave {name}: a second connection from {new} while attached from {old}; "
                 "checking the old one", name=self.name, new=new.peer, old=old.peer)
        note = new.mind.callRemote("print", message=DUPLICATE_NEW_MESSAGE.format(name=self.name))
        note.addErrback(lambda f: None)
        ping = old.mind.callRemote("print", message=dialect.DUPLICATE_MESSAGE)
        ping.addTimeout(DUPLICATE_PING_TIMEOUT, self.reactor)
        try:
            yield ping
        except Exception:
            log.info("slave {name}: the old connection from {old} did not answer; dropping it "
                     "and accepting the new one from {new}", name=self.name, old=old.peer, new=new.peer)
            old.drop()
            self.detach(old, "replaced by a new connection")
            return
        log.info("slave {name}: the old connection from {old} is alive; rejecting the new one "
                 "from {new}", name=self.name, old=old.peer, new=new.peer)
        raise RejectedDuplicate("rejecting duplicate slave")

    @defer.inlineCallbacks
    def _fetch_info(self, link: SlaveLink):
        """getWorkerInfo, else the legacy chain getSlaveInfo -> getCommands -> getVersion (§4.1)."""
        mind = link.mind
        found, info = yield _call_if_known(mind, dialect.INFO_METHOD[Dialect.WORKER])
        had_worker_info = found
        if not found:
            notice = mind.callRemote("print", message=LEGACY_NOTICE)
            notice.addErrback(lambda f: None)
            _, info = yield _call_if_known(mind, dialect.INFO_METHOD[Dialect.SLAVE])
            info = dict(info or {})
            if "slave_commands" in info:
                info["worker_commands"] = info.pop("slave_commands")
            else:
                for method, key in zip(dialect.LEGACY_INFO_FALLBACKS, ("worker_commands", "version")):
                    found, value = yield _call_if_known(mind, method)
                    if found:
                        info[key] = value
        link.info = _plain(dict(info or {}))
        link.dialect = dialect.dialect_from_info(link.info, had_worker_info=had_worker_info)

    def _accept(self, link: SlaveLink) -> None:
        self.link = link
        link.broker.notifyOnDisconnect(lambda: self.detach(link, "connection closed"))
        for sb in link.slave_builders.values():
            sb.builder.attach(sb)
        cfg = self.master_config
        keepalive = task.LoopingCall(self._send_keepalive, link)
        keepalive.clock = self.reactor
        keepalive.start(cfg.keepalive_interval, now=False)
        watch = SilenceWatchdog(self.reactor, cfg.keepalive_timeout, lambda: link.last_message,
                                lambda silent: self._silent(link, silent))
        watch.start()
        link.loops = [keepalive, watch]
        log.info("slave {name} attached from {peer} ({dialect}-era, version {version}, builders: "
                 "{builders})", name=self.name, peer=link.peer, dialect=link.dialect.value,
                 version=link.info.get("version", "?"),
                 builders=", ".join(link.slave_builders) or "none")

    # -- liveness and detach -------------------------------------------------------------------

    def _send_keepalive(self, link: SlaveLink) -> None:
        if link.gone:
            return
        d = link.mind.callRemote("print", message=dialect.KEEPALIVE_MESSAGE[link.dialect])
        d.addErrback(lambda f: None)  # silence is judged by _check_silence, not by this call

    def _silent(self, link: SlaveLink, silent: float) -> None:
        if link.gone:
            return
        log.warn("slave {name} silent for {s:.0f} s, declaring it gone", name=self.name, s=silent)
        link.drop()
        self.detach(link, f"silent for {silent:.0f} s")

    def detach(self, link: SlaveLink, why: str = "connection closed") -> None:
        """Forget `link`: stop its timers, detach its builders, fail its commands as lost."""
        if link.gone:
            return
        link.gone = True
        for loop in link.loops:
            if loop.running:
                loop.stop()
        for sb in link.slave_builders.values():
            sb.lost()
        if self.link is link:
            self.link = None
            log.info("slave {name} detached ({why})", name=self.name, why=why)

    def logout(self, link: SlaveLink) -> None:
        self.detach(link, "connection closed")

    def disconnect(self) -> None:
        """Drop the current connection, if any (master shutdown)."""
        link = self.link
        if link is not None:
            link.broker.transport.loseConnection()
            self.detach(link, "master stopping")

    def perspectiveMessageReceived(self, broker, message, args, kw):
        link = self.link
        if link is None or link.broker is not broker:
            # A call from a connection this slave no longer uses (replaced or declared gone).
            log.info("slave {name}: ignoring {m} from a stale connection", name=self.name, m=message)
            return None
        return super().perspectiveMessageReceived(broker, message, args, kw)

    # -- what the control perspective reads ---------------------------------------------------

    def summary(self) -> dict:
        link = self.link
        return {
            "name": self.name,
            "connected": link is not None,
            "connected_since": link.connected_since if link else None,
            "builders": sorted(self.builders),
            "dialect": link.dialect.value if link and link.dialect else None,
            "last_message": link.last_message if link else None,
            "peer": link.peer if link else None,
            "version": str(link.info.get("version")) if link and link.info.get("version") else None,
        }


def _call_if_known(ref, method: str):
    """callRemote that fires (True, result), or (False, None) when the peer lacks the method.

    Only NoSuchMethod (and the AttributeError a perspective gives) means "older peer"; any other
    error fails the attach (PROTOCOL.md §10.2 item 2).
    """
    d = ref.callRemote(method)

    def missing(failure):
        if _is_no_such_method(failure) or failure.check(AttributeError, "exceptions.AttributeError",
                                                        "builtins.AttributeError"):
            return (False, None)
        return failure

    d.addCallbacks(lambda result: (True, result), missing)
    return d


def _plain(value):
    """Info as plain Python values: Python 2 peers send bytes (PROTOCOL.md §1.2)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
