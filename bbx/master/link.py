"""SlaveLink: the protocol adapter for one slave connection.

Every remote call the master makes to a slave goes through the SlaveLink of that slave's
connection, and every difference between the peers it meets is settled here, once:

- which name a call has for this peer's generation (pb/dialect.py's tables): the info chain
  getWorkerInfo -> getSlaveInfo -> getCommands / getVersion (docs/protocol.md §4.1); pings on the
  Bot or on the builder (§4.2, §4.3); setMaster and the builder's "attached" for slave-era
  peers (§4.3); Bot.shutdown or, for slaves older than 0.8.3, a builder's shutdown (§4.5);
  command arguments by command version (§5.5);
- Python 2 peers' byte strings (§1.2): info and builder names reach the rest of the master as
  str, and so do update envelopes, through the stepRef it makes for each command
  (bbx/master/stepref.py: a character a Python 2 slave split across two chunks arrives whole);
- peer failures Python 3 Twisted cannot unserialise (bbx/pb/failures.py);
- a deadline on every call: a peer that stops answering is reported (PeerTimeout) and, where
  the state of the conversation is then unknown (attach, startBuild, startCommand, shutdown),
  dropped.

Builders, builds, commands and the control perspective talk to the link, never to a
RemoteReference. The model is Buildbot's master/buildbot/worker/protocols/pb.py `Connection`.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.spread import pb

from bbx.pb import dialect
from bbx.pb import failures  # noqa: F401 - installs the unjellier for Python 2 peers' failures
from bbx.pb.control import NoSlaveAttached, SlaveTimeout
from bbx.pb.dialect import Dialect
from bbx.pb.endpoints import remote_type

from . import metrics
from .stepref import StepRef

log = Logger()


def _seconds(env: str, default: float) -> float:
    """A deadline, overridable from the environment (for tests that must not wait long)."""
    try:
        value = float(os.environ.get(env, ""))
    except ValueError:
        return default
    return value if value > 0 else default


# Deadlines, in seconds, for each call the master makes to a slave. Buildbot sets only one
# (PING_TIMEOUT = 10 s, for duplicate arbitration, docs/protocol.md §2.4) and waits forever on the
# rest; bbx bounds every call so that a stalled peer cannot hold a slave's name or a builder.
#
# Each call of the attach sequence (print, the info chain, setBuilderList, setMaster, the
# builder's print): the answers are small and immediate on every known peer, and a stalled
# attach holds the slave's name (its real owner waits behind it) — so well under the 120 s a
# 0.8 slave gives its own login (HUNG_CONNECTION_TIMEOUT, §2.3). BBX_ATTACH_TIMEOUT overrides
# it (tests/test_faults_attach.py).
ATTACH_CALL_TIMEOUT = _seconds("BBX_ATTACH_TIMEOUT", 20.0)
# A ping, and the old connection's answer during duplicate arbitration: Buildbot's 10 s.
PING_TIMEOUT = 10.0
DUPLICATE_PING_TIMEOUT = PING_TIMEOUT
# startBuild and startCommand: every peer answers at once and runs the command afterwards
# (§3.2), so silence means a stuck peer; a loaded machine still answers well within this.
START_TIMEOUT = 30.0
# interruptCommand is answered at once too; the command's end comes later through the stepRef.
INTERRUPT_TIMEOUT = 30.0
# Bot.shutdown answers, then stops the slave 0.2 s later (§3.1); a lost connection is success.
SHUTDOWN_TIMEOUT = 30.0
# The master's periodic keepalive print: silence is judged elsewhere (the slave's own traffic),
# so this only keeps an unanswered call from living for ever.
KEEPALIVE_TIMEOUT = 60.0

# The 0.8 fallback notice a 4.3 master prints before using getSlaveInfo (§4.1 step 2.3).
LEGACY_NOTICE = "buildbot-slave detected, failing back to deprecated buildslave API."


class PeerTimeout(pb.Error):
    """The slave did not answer a call within its deadline; str() says which and how long.

    A pb.Error, so that when it ends a login it reaches the peer as one line and Twisted logs
    no traceback for it (the master logs its own line)."""


class MissingMethod(Exception):
    """The slave has no such remote method (its NoSuchMethod): an older peer (§10.2 item 2)."""


def _is_missing(failure) -> bool:
    if failure.check(dialect.NO_SUCH_METHOD):
        return True
    return remote_type(failure) == dialect.NO_SUCH_METHOD


def _is_lost(failure) -> bool:
    return bool(failure.check(pb.PBConnectionLost, pb.DeadReferenceError))


def peer_text(peer) -> str:
    """A peer address for the log: host:port, [v6]:port or unix:path."""
    if peer is None:
        return "?"
    host = getattr(peer, "host", None)
    if host is not None:
        return f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"
    name = getattr(peer, "name", None)
    return f"unix:{name.decode() if isinstance(name, bytes) else name or '?'}"


class _MasterSideBuilder(pb.Referenceable):
    """What a slave-era peer gets through setMaster: the master's side of one builder.

    It offers no remote methods; a 0.8 slave only watches it for disconnect (§3.2, §4.3).
    """


class SlaveLink:
    """One connection of one slave: its Bot (the mind), what it said about itself, its builder
    references, and every call the master makes to it.

    `slave_builders` holds the master-side SlaveBuilders over this connection (the
    SlavePerspective's bookkeeping); `graceful` is set once the slave asked to shut down.
    """

    def __init__(self, broker, mind, reactor, *, slave: str = "?"):
        self.broker = broker
        self.mind = mind
        self.reactor = reactor
        self.slave = slave
        self.info: dict[str, Any] = {}
        self.dialect: Dialect | None = None
        self.connected_since = reactor.seconds()
        self.slave_builders: dict = {}
        self.gone = False
        self.graceful = False
        self.loops: list[task.LoopingCall] = []
        self.slave_keepalive_at: float | None = None  # when the slave last sent its keepalive
        self._builders: dict[str, Any] = {}  # builder name -> the slave's builder reference
        self.builder_dirs: dict[str, str] = {}  # builder name -> the builddir last sent for it
        self._master_sides: dict[str, _MasterSideBuilder] = {}
        peer = broker.transport.getPeer() if broker.transport else None
        self.peer = peer_text(peer)

    # -- what the rest of the master reads ------------------------------------------------------

    @property
    def commands(self) -> dict:
        """The peer's command table (name -> version), whichever generation named it."""
        return self.info.get("worker_commands") or {}

    @property
    def builder_names(self) -> list[str]:
        """The builders the slave runs now, as its last setBuilderList answer said."""
        return list(self._builders)

    @property
    def last_message(self) -> float:
        return getattr(self.broker, "last_received", None) or self.connected_since

    def drop(self) -> None:
        """Cut the connection now (no goodbye): a stalled or unwanted peer."""
        transport = self.broker.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def close(self) -> None:
        """This connection is over: stop its timers; later calls fail as lost."""
        self.gone = True
        for loop in self.loops:
            if loop.running:
                loop.stop()

    # -- the one place callRemote happens ------------------------------------------------------

    def _call(self, ref, method: str, *args, timeout: float, **kwargs) -> defer.Deferred:
        """ref.callRemote(method, ...) with a deadline; failures made plain:

        MissingMethod (the peer lacks it), PeerTimeout (no answer in `timeout` s),
        pb.PBConnectionLost (the connection went away); anything else as the peer sent it.
        """
        if self.gone or ref is None:
            return defer.fail(pb.PBConnectionLost(f"slave {self.slave} is not attached"))
        d = defer.maybeDeferred(ref.callRemote, method, *args, **kwargs)

        def expired(result, seconds):
            raise PeerTimeout(f"slave {self.slave} did not answer {method} within {seconds:g} s")

        d.addTimeout(timeout, self.reactor, onTimeoutCancel=expired)

        def failed(failure):
            if failure.check(PeerTimeout):
                return failure
            if _is_missing(failure):
                raise MissingMethod(method)
            if _is_lost(failure):
                raise pb.PBConnectionLost(f"lost the connection to slave {self.slave}")
            return failure

        d.addErrback(failed)
        return d

    def _say(self, ref, *args, timeout: float, **kwargs) -> defer.Deferred:
        """A print whose failure does not matter, except that a stalled peer stays stalled."""
        d = self._call(ref, "print", *args, timeout=timeout, **kwargs)
        d.addErrback(lambda f: f if f.check(PeerTimeout) else None)
        return d

    # -- the attach sequence (docs/protocol.md §4.1, §4.3) ---------------------------------------------

    def print(self, message: str, *, timeout: float = ATTACH_CALL_TIMEOUT) -> defer.Deferred:
        """Bot.print(message=...): a line in the slave's log ("attached" makes a worker's
        `start` report success, §8). Errbacks as `_call`."""
        return self._call(self.mind, "print", message=message, timeout=timeout)

    def tell(self, message: str, *, timeout: float = ATTACH_CALL_TIMEOUT) -> defer.Deferred:
        """Bot.print whose answer does not matter; only a timeout errbacks."""
        return self._say(self.mind, message=message, timeout=timeout)

    @defer.inlineCallbacks
    def fetch_info(self):
        """getWorkerInfo, else the legacy chain getSlaveInfo -> getCommands -> getVersion
        (§4.1 step 2.3); sets and fires with `info` (str keys and values), and sets `dialect`."""
        mind = self.mind
        try:
            info = yield self._call(mind, dialect.INFO_METHOD[Dialect.WORKER],
                                    timeout=ATTACH_CALL_TIMEOUT)
            had_worker_info = True
        except MissingMethod:
            had_worker_info = False
            yield self.tell(LEGACY_NOTICE)
            try:
                info = yield self._call(mind, dialect.INFO_METHOD[Dialect.SLAVE],
                                        timeout=ATTACH_CALL_TIMEOUT)
            except MissingMethod:
                info = {}
            info = dialect.plain(info) if isinstance(info, dict) else {}
            if "slave_commands" in info:
                info["worker_commands"] = info.pop("slave_commands")
            else:
                for method, key in zip(dialect.LEGACY_INFO_FALLBACKS, ("worker_commands", "version")):
                    try:
                        info[key] = yield self._call(mind, method, timeout=ATTACH_CALL_TIMEOUT)
                    except MissingMethod:
                        pass
        info = dialect.plain(info) if isinstance(info, dict) else {}
        if not isinstance(info.get("worker_commands"), dict):
            info.pop("worker_commands", None)
        self.info = info
        self.dialect = dialect.dialect_from_info(info, had_worker_info=had_worker_info)
        return info

    @defer.inlineCallbacks
    def set_builder_list(self, wanted):
        """Bot.setBuilderList(wanted): make the slave run these builders and only these.

        `wanted` is a list of (builder name, builddir) pairs. It may be called again on a live
        connection with a changed list (reconfiguration, SEED-master-slave-api "Bot methods"):
        the slave adds the new builders and stops the others. Each newly listed builder is
        announced as the peer's generation expects: setMaster + the builder's print("attached")
        for slave-era peers (§4.3), Bot.print("attached") for all (§4.1 step 5).
        Fires with {builder name: the slave's builder reference}, for the wanted names only.
        """
        wanted = [(str(name), str(builddir)) for name, builddir in wanted]
        names = {name for name, _ in wanted}
        answer = yield self._call(self.mind, "setBuilderList", wanted, timeout=ATTACH_CALL_TIMEOUT)
        refs = {}
        for name, ref in (answer.items() if isinstance(answer, dict) else ()):
            name = dialect.plain(name)
            if name in names:  # never more builders than asked for, whatever the peer says
                refs[name] = ref
        added = [name for name, _ in wanted if name in refs and name not in self._builders]
        self._builders = refs
        self.builder_dirs = {name: builddir for name, builddir in wanted if name in refs}
        for name in list(self._master_sides):
            if name not in refs:
                del self._master_sides[name]
        for name in added:
            if self.dialect is Dialect.SLAVE:
                side = self._master_sides[name] = _MasterSideBuilder()
                yield self._call(refs[name], "setMaster", side, timeout=ATTACH_CALL_TIMEOUT)
                yield self._call(refs[name], "print", dialect.ATTACHED_MESSAGE,
                                 timeout=ATTACH_CALL_TIMEOUT)
            yield self.print(dialect.ATTACHED_MESSAGE)
        return dict(refs)

    # -- liveness ---------------------------------------------------------------------------------

    def ping(self, builder: str) -> defer.Deferred:
        """Ping the slave once, the way its generation expects: Bot.print("ping") for worker-era
        peers, the builder's print("ping") for slave-era ones (§4.2, §4.3). Fires with the
        round-trip time in seconds; errbacks with SlaveTimeout after PING_TIMEOUT or
        NoSlaveAttached when the connection is gone."""
        start = self.reactor.seconds()
        if self.dialect is Dialect.SLAVE:
            d = self._call(self._builders.get(builder), "print", dialect.PING_MESSAGE,
                           timeout=PING_TIMEOUT)
        else:
            d = self._call(self.mind, "print", message=dialect.PING_MESSAGE, timeout=PING_TIMEOUT)

        def answered(answer):
            self.clock_sample = (start, answer, self.reactor.seconds())  # bbx ping's clock offset
            return self.reactor.seconds() - start

        def failed(failure):
            if failure.check(PeerTimeout):
                raise SlaveTimeout(f"slave {self.slave} did not answer a ping within "
                                   f"{PING_TIMEOUT:g} s")
            if failure.check(pb.PBConnectionLost):
                raise NoSlaveAttached(f"lost the connection to slave {self.slave}")
            raise SlaveTimeout(f"ping of slave {self.slave} failed: {failure.getErrorMessage()}")

        d.addCallbacks(answered, failed)
        return d

    def keepalive(self) -> None:
        """The master's periodic print to the Bot (§4.4). Returns at once: its answer does not
        matter, and the next one goes out on time whether or not this one was answered."""
        d = self._call(self.mind, "print", message=dialect.KEEPALIVE_MESSAGE[self.dialect],
                       timeout=KEEPALIVE_TIMEOUT)
        metrics.KEEPALIVE_RTT.time(d, self.reactor)
        d.addErrback(lambda f: None)  # silence is judged by the slave's own traffic

    def check_duplicate(self) -> defer.Deferred:
        """Duplicate arbitration (§2.4): is this (old) connection still alive? Fires if its Bot
        answers within DUPLICATE_PING_TIMEOUT; errbacks otherwise."""
        return self._call(self.mind, "print", message=dialect.DUPLICATE_MESSAGE,
                          timeout=DUPLICATE_PING_TIMEOUT)

    # -- builds and commands ------------------------------------------------------------------------

    def _stuck(self, failure, what: str):
        """A start or shutdown call went unanswered: the conversation's state is unknown, so
        the connection is dropped (its builds end as RETRY, its slave reconnects)."""
        if failure.check(PeerTimeout):
            log.warn("slave {slave} did not answer {what}; dropping the connection",
                     slave=self.slave, what=what)
            self.drop()
        return failure

    def start_build(self, builder: str) -> defer.Deferred:
        """The builder's startBuild() before a build's first command (§4.2); answers None."""
        d = self._call(self._builders.get(builder), "startBuild", timeout=START_TIMEOUT)
        d.addErrback(self._stuck, "startBuild")
        return d

    def start_command(self, builder: str, command, command_id: str, name: str,
                      args: dict) -> defer.Deferred:
        """The builder's startCommand(stepRef, id, name, args) (§3.2).

        `command` (a RemoteCommand) gets the slave's update and complete calls through a stepRef
        made here; `args` are rewritten for this peer's command versions (§5.5). Fires once the
        slave accepted; errbacks with its refusal (unknown command, bad arguments) as it sent it.
        """
        wire_args = dialect.args_for_peer(name, args, self.commands)
        d = self._call(self._builders.get(builder), "startCommand", StepRef(command),
                       command_id, name, wire_args, timeout=START_TIMEOUT)
        d.addErrback(self._stuck, "startCommand")
        return d

    def interrupt_command(self, builder: str, command_id: str, why: str) -> defer.Deferred:
        """The builder's interruptCommand(id, why) (§6): the command still ends through its
        stepRef's complete. Fires with None; errbacks as `_call`."""
        return self._call(self._builders.get(builder), "interruptCommand", command_id, str(why),
                          timeout=INTERRUPT_TIMEOUT)

    @defer.inlineCallbacks
    def shutdown(self):
        """Stop the slave process: Bot.shutdown(), or — for slaves older than 0.8.3, which lack
        it — one builder's shutdown() (§4.5). The connection going away during the call is the
        expected success. Fires with None."""
        try:
            yield self._call(self.mind, "shutdown", timeout=SHUTDOWN_TIMEOUT)
            return None
        except MissingMethod:
            pass
        except pb.PBConnectionLost:
            return None
        except PeerTimeout as e:
            self._stuck_now(e)
            return None
        for name, ref in list(self._builders.items()):
            log.info("slave {slave} has no Bot.shutdown; asking builder {name} instead",
                     slave=self.slave, name=name)
            try:
                yield self._call(ref, "shutdown", timeout=SHUTDOWN_TIMEOUT)
            except pb.PBConnectionLost:
                pass
            except PeerTimeout as e:
                self._stuck_now(e)
            return None
        log.warn("slave {slave} has neither Bot.shutdown nor a builder to shut it down",
                 slave=self.slave)
        return None

    def _stuck_now(self, error: PeerTimeout) -> None:
        log.warn("{why}; dropping the connection", why=str(error))
        self.drop()
