"""SlavePerspective: one configured slave, its attach sequence, liveness and detach.

The attach sequence runs inside the realm's requestAvatar, before the login answer goes back
(docs/protocol.md §4.1): a real buildbot-worker only reports a successful start once it has seen
"attached", and treats any error raised here as fatal (§2.3).
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.spread import pb

from bbx.pb import dialect
from bbx.pb.banana import printable
from bbx.pb.liveness import SilenceWatchdog
from bbx.pb.tags import offered_tags

from . import farmstate, selection

from .builder import Builder, SlaveBuilder
from .config import MasterConfig, SlaveConfig
from .link import PeerTimeout, SlaveLink

log = Logger()

# Sent to the newcomer while the old connection is checked, as 0.8 masters do (§2.4).
# A stale connection's method name is logged at most this long (a name is a few dozen bytes).
STALE_NAME_LIMIT = 80
DUPLICATE_NEW_MESSAGE = "master already has a connection named '{name}' - checking its liveness"


class RejectedDuplicate(pb.Error, RuntimeError):
    """Raised into a newcomer's login when the slave of that name is alive elsewhere."""


class SlavePerspective(pb.Avatar):
    """The avatar of one configured slave: what the slave's perspective calls reach.

    There is one per configured slave; `link` is its current connection (None while detached).
    `operator_state` is what an operator made of it (bbx/master/farmstate.py): "active",
    "paused" or "draining"; `offered_tags` are the tags the slave sent at its last attach.
    With an `admission` queue (bbx/master/admission.py) its attach sequences wait their turn
    among all slaves'.
    """

    def __init__(self, config: SlaveConfig, master_config: MasterConfig,
                 builders: dict[str, Builder], reactor, admission=None, index=None):
        self.config = config
        self.master_config = master_config
        self.all_builders = builders
        self.offered_tags: tuple[str, ...] = ()
        self.operator_state = farmstate.ACTIVE
        # `index`: a selection.BuilderIndex of `builders`, when many slaves are made at once.
        self.builders = (index.for_slave(config.name, config.tags) if index is not None
                         else selection.builders_for(builders, config.name, config.tags))
        self.reactor = reactor
        self.link: SlaveLink | None = None
        self._lock = defer.DeferredLock()
        self.admission = admission

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def shutting_down(self) -> bool:
        """True while the connected slave waits for a graceful shutdown: no new work for it."""
        return self.link is not None and self.link.graceful

    @property
    def takes_work(self) -> bool:
        """May a new build or command start here? Not while paused, draining or shutting down."""
        return self.operator_state == farmstate.ACTIVE and not self.shutting_down

    @property
    def tags(self) -> tuple[str, ...]:
        """The effective tags: master.toml's, then those the slave offered (selection.py)."""
        return tuple(dict.fromkeys(self.config.tags + self.offered_tags))

    # -- what the slave calls -------------------------------------------------------------

    def perspective_keepalive(self):
        """The slave's periodic keepalive (no arguments); returns None. Only proves liveness."""
        link = self.link
        if link is not None:
            link.slave_keepalive_at = self.reactor.seconds()
        return None

    def perspective_clock(self):
        """A bbx extension (no arguments): the master's clock, seconds since the epoch, so that
        `bbx doctor SLAVE_DIR` can tell the slave host's clock offset. Buildbot masters lack it."""
        return self.reactor.seconds()

    def perspective_shutdown(self):
        """The slave asks to shut down gracefully (no arguments); returns None.

        As a Buildbot master does (docs/protocol.md §4.5): the slave gets no new builds or commands,
        and once everything running on it — whole builds, not just the current step — has
        ended, the master calls `Bot.shutdown()`.
        """
        if self.link is not None:
            log.info("slave {name} asked to shut down; it gets no new work", name=self.name)
            self.shutdown_when_idle()
        return None

    def shutdown_when_idle(self) -> bool:
        """Give the connected slave no new work and, once every build running on it has
        ended, call its shutdown (docs/protocol.md §4.5). False when it is not attached. Setting
        `link.graceful` back to False before then (bbx slave resume) calls the shutdown off."""
        link = self.link
        if link is None:
            return False
        link.graceful = True
        running = []
        for sb in link.slave_builders.values():
            if sb.build is not None:
                running.append(sb.build.finished)
            elif sb.command is not None:
                running.append(sb.command.done)

        def stop(_=None):
            if not link.gone and link.graceful:
                log.info("slave {name} is idle; telling it to shut down", name=self.name)
                link.shutdown().addErrback(
                    lambda f: log.warn("shutting slave {name} down failed: {why}",
                                       name=self.name, why=f.getErrorMessage()))
        if running:
            defer.DeferredList(running, consumeErrors=True).addCallback(stop)
        else:
            stop()
        return True

    # -- attach -----------------------------------------------------------------------------

    def attach(self, mind, broker):
        """Run the attach sequence for a new connection; fire when the slave may get its avatar."""
        if self.admission is None:
            return self._lock.run(self._attach, mind, broker)
        # The lock outside the queue: a duplicate waiting for this name holds no place in it.
        return self._lock.run(self.admission.run, self._attach, mind, broker,
                              wanted=lambda: not broker.disconnected)

    @defer.inlineCallbacks
    def _attach(self, mind, broker):
        link = SlaveLink(broker, mind, self.reactor, slave=self.name)
        try:
            if self.link is not None:
                yield self._arbitrate(link)
            yield link.print(dialect.ATTACHED_MESSAGE)
            yield link.fetch_info()
            self._take_tags(link)
            yield self._set_builders(link, self.builders)
            if not link.slave_builders:
                yield link.print(dialect.ATTACHED_MESSAGE)
        except PeerTimeout as e:
            # A peer that logged in and then stalls must not hold this slave's name: drop it,
            # so the lock frees and the real slave (waiting behind it, or retrying) attaches.
            log.warn("slave {name} from {peer} stalled while attaching ({why}); dropping it",
                     name=self.name, peer=link.peer, why=str(e))
            link.drop()
            link.close()
            raise
        if broker.disconnected:
            raise pb.PBConnectionLost("the slave went away while attaching")
        self._accept(link)
        return link

    def settled(self) -> defer.Deferred:
        """Fires (None) once no attach of this slave is in progress."""
        return self._lock.run(lambda: None)

    def update_builders(self, link: SlaveLink, builders: dict[str, Builder],
                        builddirs: dict[str, str]) -> defer.Deferred:
        """Reconfiguration (bbx/master/reconfig.py): give the attached slave of `link` these
        builders, each in the given builddir; fires with their names (None if `link` is no
        longer this slave's). Serialised with attach."""
        def update():
            if self.link is not link or link.gone:
                return None
            return self._set_builders(link, builders, builddirs)
        return self._lock.run(update)

    def _take_tags(self, link: SlaveLink) -> None:
        """The tags the slave offers in its info (optional; bounded by bbx/pb/tags.py), and the
        builders they, with master.toml's, give it."""
        tags, problems = offered_tags(link.info.get("tags"))
        for problem in problems:
            log.warn("slave {name}: {problem}", name=self.name, problem=problem)
        self.offered_tags = tags
        self.builders = selection.builders_for(self.all_builders, self.name, self.tags)

    @defer.inlineCallbacks
    def _set_builders(self, link: SlaveLink, builders: dict[str, Builder],
                      builddirs: dict[str, str] | None = None):
        """Give the slave of `link` exactly these builders (setBuilderList) and keep one
        master-side SlaveBuilder per builder it runs. Builders it no longer runs are lost
        (their command fails as lost). Used at attach; a live connection's builders change the
        same way (reconfiguration). `builddirs` overrides a builder's configured builddir."""
        builddirs = builddirs or {}
        wanted = [(name, builddirs.get(name, b.config.builddir)) for name, b in builders.items()]
        refs = yield link.set_builder_list(wanted)
        for name, sb in list(link.slave_builders.items()):
            if name not in refs or builders.get(name) is not sb.builder:
                del link.slave_builders[name]
                sb.lost()
        for name in refs:
            if name in link.slave_builders:
                continue
            sb = link.slave_builders[name] = SlaveBuilder(builders[name], self, link, self.reactor)
            if self.link is link:  # already accepted: the builder may use it at once
                sb.builder.attach(sb)
        return sorted(refs)

    @defer.inlineCallbacks
    def _arbitrate(self, new: SlaveLink):
        """Two connections claim this name: keep the old one if it answers (docs/protocol.md §2.4)."""
        old = self.link
        log.info("slave {name}: a second connection from {new} while attached from {old}; "
                 "checking the old one", name=self.name, new=new.peer, old=old.peer)
        new.tell(DUPLICATE_NEW_MESSAGE.format(name=self.name)).addErrback(lambda f: None)
        try:
            yield old.check_duplicate()
        except Exception:
            log.info("slave {name}: the old connection from {old} did not answer; dropping it "
                     "and accepting the new one from {new}", name=self.name, old=old.peer, new=new.peer)
            old.drop()
            self.detach(old, "replaced by a new connection")
            return
        log.info("slave {name}: the old connection from {old} is alive; rejecting the new one "
                 "from {new}", name=self.name, old=old.peer, new=new.peer)
        raise RejectedDuplicate("rejecting duplicate slave")

    def _accept(self, link: SlaveLink) -> None:
        self.link = link
        link.broker.notifyOnDisconnect(lambda: self.detach(link, "connection closed"))
        for sb in link.slave_builders.values():
            sb.builder.attach(sb)
        cfg = self.master_config
        keepalive = task.LoopingCall(self._keepalive, link, cfg.keepalive_interval)
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

    def _keepalive(self, link: SlaveLink, interval: float) -> None:
        # A slave that sends its own keepalives (a bbx slave, every 30 s) hears our answers to
        # them: printing to it as well doubles the idle traffic for nothing (at 10,000 slaves,
        # 333 messages a second). A buildbot-worker sends one every 600 s, so it still gets ours.
        since = link.slave_keepalive_at
        if since is not None and self.reactor.seconds() - since < interval:
            return
        link.keepalive()

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
        link.close()
        for sb in link.slave_builders.values():
            sb.lost()
        if self.link is link:
            self.link = None
            if self.operator_state == farmstate.DRAINING:
                self.operator_state = farmstate.PAUSED  # drained: no work when it comes back
            log.info("slave {name} detached ({why})", name=self.name, why=why)

    def logout(self, link: SlaveLink) -> None:
        self.detach(link, "connection closed")

    def disconnect(self, why: str = "master stopping") -> None:
        """Drop the current connection, if any (master shutdown; a slave removed from
        master.toml)."""
        link = self.link
        if link is not None:
            if link.broker.transport is not None:
                link.broker.transport.loseConnection()
            self.detach(link, why)

    def perspectiveMessageReceived(self, broker, message, args, kw):
        link = self.link
        if link is None or link.broker is not broker:
            # A call from a connection this slave no longer uses (replaced or declared gone).
            # The method name is the peer's bytes: escaped and bounded like every peer string.
            log.info("slave {name}: ignoring {m} from a stale connection", name=self.name,
                     m=printable(message, STALE_NAME_LIMIT))
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
            "tags": list(self.tags),
            **farmstate.describe(self),
        }
