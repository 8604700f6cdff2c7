"""Reconfiguration: re-read master.toml in a running master and apply it without a restart.

SIGHUP (and `bbx master reconfig DIR`, which sends it) runs `Reconfigurator.run()`. In order:

1. load and check master.toml as `checkconfig` does; a bad file changes nothing and the one
   line (file:line: key: problem; fix) is logged and reported;
2. `plan()`: compare the running config with the new one (a pure function of the two);
3. apply it at once, with no reactor turn in between, by swapping whole config objects
   (ARCHITECTURE.md, Rules): passwords (a changed one applies to the next login), control
   users, each slave's max_builds, builders added / removed / changed (their steps apply to
   builds that start from now on; a running build keeps the steps it started with);
4. each attached slave whose builder list changed gets `setBuilderList` with its new list
   (through its SlaveLink, docs/protocol.md §4.8). A builder that is busy on a slave (a build
   or a `bbx run` command) stays on that slave's list, with its old directory, until that
   build ends, and only then leaves it: every peer kills a command whose builder leaves its
   list without sending `complete` (§4.8);
5. a removed slave that is attached gets no new work, is told why (Bot.print, in its log),
   and is disconnected once its running builds end; its login is refused from then on.

Settings the master binds at start (listen, db, name, http, log, heartbeat_timeout) are
reported as needing a restart and keep their running values; everything else applies.

The outcome is one log line, also written to DIR/master.reconfig (JSON: pid, serial, ok,
line) for `bbx master reconfig`, so the CLI never parses the log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb

from bbx.pb.endpoints import server_endpoint

from . import selection
from .builder import Builder
from .config import MasterConfig, load_config
from .link import PeerTimeout
from .slave import SlavePerspective
from .tomlcheck import ConfigError, Locator

log = Logger()

STATE_FILE = "master.reconfig"

# Settings the running master bound at start: listening sockets, the store, the log file,
# and the name and heartbeat it registered under. A change is reported, not applied.
RESTART_KEYS = ("listen", "listen_backlog", "db", "name", "http", "log", "heartbeat_timeout")
# Settings that apply live; the keepalive pair is read when a slave attaches, so it applies
# to each slave from its next login.
LIVE_KEYS = ("keepalive_interval", "keepalive_timeout", "login_timeout", "retry_lost",
             "max_attaching")

# What a removed slave is told before the master disconnects it (it logs the master's prints).
REMOVED_MESSAGE = ("this slave ({name}) was removed from the master's master.toml; the master "
                   "disconnects it and refuses its logins until it is configured again")


@dataclass(frozen=True)
class Plan:
    """What a reconfiguration changes: `config` is the config to run with (the new file with
    the restart-only settings kept at their running values); the rest name what changed."""

    config: MasterConfig
    slaves_added: tuple[str, ...] = ()
    slaves_removed: tuple[str, ...] = ()
    slaves_changed: tuple[str, ...] = ()
    builders_added: tuple[str, ...] = ()
    builders_removed: tuple[str, ...] = ()
    builders_changed: tuple[str, ...] = ()
    control_changed: bool = False
    settings_changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self) if f.name != "config")


def _changes(old: dict, new: dict) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    added = tuple(n for n in new if n not in old)
    removed = tuple(n for n in old if n not in new)
    changed = tuple(n for n in new if n in old and new[n] != old[n])
    return added, removed, changed


def plan(old: MasterConfig, new: MasterConfig) -> Plan:
    """Compare the running config with a freshly loaded one."""
    restart = tuple(f"master.{k}" for k in RESTART_KEYS if getattr(old, k) != getattr(new, k))
    kept = replace(new, **{k: getattr(old, k) for k in RESTART_KEYS})
    s_added, s_removed, s_changed = _changes({s.name: s for s in old.slaves},
                                             {s.name: s for s in new.slaves})
    b_added, b_removed, b_changed = _changes({b.name: b for b in old.builders},
                                             {b.name: b for b in new.builders})
    return Plan(config=kept, slaves_added=s_added, slaves_removed=s_removed,
                slaves_changed=s_changed, builders_added=b_added, builders_removed=b_removed,
                builders_changed=b_changed,
                control_changed=set(old.control_users) != set(new.control_users),
                settings_changed=tuple(f"master.{k}" for k in LIVE_KEYS
                                       if getattr(old, k) != getattr(new, k)),
                needs_restart=restart)


def check_endpoints(config: MasterConfig, reactor) -> None:
    """A listen or http string that would not parse at the next start is a bad file now."""
    lines = Locator(config.path.read_text(errors="replace"))
    for key in ("listen", "http"):
        value = getattr(config, key)
        if not value:
            continue
        try:
            server_endpoint(reactor, value)
        except ValueError as e:
            number = lines.line("[master]", key)
            at = f"{config.path}:{number}" if number else str(config.path)
            raise ConfigError(f'{at}: master.{key}: {e}; write e.g. {key} = '
                              f'"tcp:9989:interface=127.0.0.1"') from None


@dataclass(frozen=True)
class Outcome:
    """The result of one reconfiguration: whether it applied, and its one line."""

    ok: bool
    line: str


def _when_done(deferred: defer.Deferred) -> defer.Deferred:
    """A Deferred firing (with None) when `deferred` does, leaving its result to its owner."""
    out = defer.Deferred()

    def passthrough(result):
        out.callback(None)
        return result

    deferred.addBoth(passthrough)
    return out


def _running(sb) -> defer.Deferred | None:
    """Fires when what runs on the master-side SlaveBuilder `sb` ends; None when it is idle."""
    if sb.build is not None:
        return _when_done(sb.build.finished)
    if sb.command is not None:
        return _when_done(sb.command.done)
    return None


class Reconfigurator:
    """Applies master.toml to one running MasterService (its `reconfig()` makes one)."""

    def __init__(self, service):
        self.service = service
        self.serial = 0
        self._lock = defer.DeferredLock()  # one reconfiguration at a time
        self._waiting: set = set()          # master-side SlaveBuilders held until idle
        self._retiring: set[str] = set()    # removed slaves waiting for their builds

    @property
    def state_file(self) -> Path:
        return self.service.basedir / STATE_FILE

    def run(self) -> defer.Deferred:
        """Re-read master.toml and apply it; fires with an Outcome (never errbacks)."""
        return self._lock.run(self._run)

    @defer.inlineCallbacks
    def _run(self):
        service = self.service
        try:
            new = load_config(service.config.path.parent)
            check_endpoints(new, service.reactor)
        except ConfigError as e:
            return self._finish(False, f"reconfiguration failed: {e}; nothing changed")
        change = plan(service.config, new)
        try:
            self._apply(change)
            notes = yield self._sync_all()
        except Exception:
            log.failure("reconfiguration failed")
            return self._finish(False, "reconfiguration failed with an internal error (the "
                                       "master's log has the traceback); restart the master "
                                       "to be sure of its configuration")
        return self._finish(True, "reconfiguration finished: " + _summary(change, notes))

    def _finish(self, ok: bool, line: str) -> Outcome:
        (log.info if ok else log.error)("{line}", line=line)
        self.serial += 1
        record = {"pid": os.getpid(), "serial": self.serial, "ok": ok, "line": line}
        tmp = self.state_file.with_name(STATE_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.warn("cannot write {path}: {why}", path=str(self.state_file), why=e.strerror)
        return Outcome(ok, line)

    # -- applying: no reactor turn between the first swap and the last ---------------------------

    def _apply(self, change: Plan) -> None:
        service = self.service
        config = change.config
        service.config = config
        service.queue.config = config
        service.queue.retry_lost = config.retry_lost
        service.gate.login_timeout = config.login_timeout
        service.admission.limit = config.max_attaching
        passwords = {s.name: s.password for s in config.slaves}
        passwords.update({u.name: u.password for u in config.control_users})
        service.dispatcher.passwords = passwords
        service.load.limits = {s.name: s.max_builds for s in config.slaves}

        # The builders and slaves dicts are shared with the queue, the realm and the control
        # perspective, so they are refilled in place, in the file's order.
        builders = service.builders
        kept = {}
        for b in config.builders:
            builder = builders.get(b.name)
            if builder is None:
                builder = Builder(b, service.load)
                builder.on_attach = service.queue.maybe_start
            else:
                builder.config = b
            kept[b.name] = builder
        builders.clear()
        builders.update(kept)

        slaves = service.slaves
        perspectives = {}
        for s in config.slaves:
            persp = slaves.get(s.name)
            if persp is None:
                persp = SlavePerspective(s, config, builders, service.reactor,
                                         admission=service.admission)
            persp.config = s
            self._retiring.discard(s.name)
            perspectives[s.name] = persp
        for name in change.slaves_removed:
            persp = slaves.get(name)
            if persp is not None and persp.link is not None:
                perspectives[name] = persp  # listed until it is disconnected
        for name, persp in slaves.items():
            if name in self._retiring:
                perspectives.setdefault(name, persp)
        slaves.clear()
        slaves.update(perspectives)
        index = selection.BuilderIndex(builders)
        for persp in slaves.values():
            persp.master_config = config
            persp.builders = index.for_slave(persp.name, persp.tags)
        for name in change.slaves_removed:
            if name in slaves:
                self._retire(slaves[name])
        self._drop_requests(change.builders_removed)
        service.queue.maybe_start()

    def _drop_requests(self, removed: tuple[str, ...]) -> None:
        """Queued requests for a removed builder can never run on this master (a shared store's
        requests may still run on another master, so they stay)."""
        queue = self.service.queue
        if not removed or self.service.store.shared:
            return
        for request in [r for r in queue.requests if r["builder"] in removed]:
            log.info("build request {id} is for builder {b}, which was removed from "
                     "master.toml; cancelling it", id=request["id"], b=request["builder"])
            queue.cancel_request(request["id"]).addErrback(
                lambda f: log.warn("cannot cancel build request: {why}", why=f.getErrorMessage()))

    # -- each attached slave's builder list ---------------------------------------------------

    @defer.inlineCallbacks
    def _sync_all(self):
        slaves = [p for p in self.service.slaves.values() if p.name not in self._retiring]
        answers = yield defer.DeferredList([self.sync(p) for p in slaves], consumeErrors=True)
        return [note for ok, note in answers if ok and note]

    def sync(self, slave: SlavePerspective) -> defer.Deferred:
        """Send `slave` setBuilderList if its builders differ from its config; fires with a note
        for the summary ("" when nothing was sent)."""
        # An attach in progress may have sent the list from before this reconfiguration.
        return slave.settled().addCallback(lambda _: self._sync(slave))

    def _sync(self, slave: SlavePerspective) -> defer.Deferred:
        link = slave.link
        if link is None or link.gone or slave.name in self._retiring:
            return defer.succeed("")
        wanted = dict(slave.builders)
        dirs = {name: b.config.builddir for name, b in wanted.items()}
        held = []
        for name, sb in link.slave_builders.items():
            if not sb.busy:
                continue
            if wanted.get(name) is not sb.builder or dirs.get(name) != link.builder_dirs.get(name):
                wanted[name], dirs[name] = sb.builder, link.builder_dirs.get(name)
                held.append(sb)
        current = link.slave_builders
        if set(wanted) == set(current) and all(
                current[n].builder is wanted[n] and link.builder_dirs.get(n) == dirs[n]
                for n in wanted):
            return defer.succeed(self._hold(slave, held))
        d = slave.update_builders(link, wanted, dirs)

        def done(names):
            log.info("slave {name}: builders now {builders}", name=slave.name,
                     builders=", ".join(names or ()) or "none")
            return self._hold(slave, held) or f"sent {slave.name} its builder list"

        def failed(failure):
            if failure.check(PeerTimeout):
                # Its builder list is unknown now: a fresh attach gives it the new one.
                link.drop()
            elif not failure.check(pb.PBConnectionLost):
                log.warn("slave {name}: setBuilderList failed: {why}", name=slave.name,
                         why=failure.getErrorMessage())
            return f"slave {slave.name} did not take its builder list ({failure.getErrorMessage()})"

        d.addCallbacks(done, failed)
        return d

    def _hold(self, slave: SlavePerspective, held: list) -> str:
        """Builders kept on `slave` while they run: sync again as each ends."""
        notes = []
        for sb in held:
            what = (f"build {sb.build.build_id}" if sb.build is not None and sb.build.build_id
                    else "a command")
            notes.append(f"{sb.name} stays on {slave.name} until {what} ends")
            if sb in self._waiting:
                continue
            ended = _running(sb)
            if ended is None:
                continue
            self._waiting.add(sb)
            log.info("builder {b} is busy on slave {s} ({what}); it changes there when that "
                     "ends", b=sb.name, s=slave.name, what=what)

            def resync(_, sb=sb):
                self._waiting.discard(sb)
                self._lock.run(self.sync, slave)

            ended.addCallback(resync)
        return "; ".join(notes)

    # -- removed slaves -----------------------------------------------------------------------

    def _retire(self, slave: SlavePerspective) -> None:
        link = slave.link
        busy = [sb for sb in link.slave_builders.values() if sb.busy]
        self._retiring.add(slave.name)
        if not busy:
            self._disconnect(slave, link)
            return
        log.info("slave {name} was removed from master.toml; it is disconnected when its "
                 "{n} running build(s) end", name=slave.name, n=len(busy))
        waits = [d for d in (_running(sb) for sb in busy) if d is not None]
        defer.DeferredList(waits).addCallback(lambda _: self._disconnect(slave, link))

    def _disconnect(self, slave: SlavePerspective, link) -> None:
        if slave.name not in self._retiring:
            return  # configured again meanwhile
        self._retiring.discard(slave.name)
        if self.service.slaves.get(slave.name) is slave:
            del self.service.slaves[slave.name]
        if link.gone or slave.link is not link:
            return
        log.info("slave {name} was removed from master.toml; disconnecting it", name=slave.name)
        d = link.tell(REMOVED_MESSAGE.format(name=slave.name))
        d.addBoth(lambda _: slave.disconnect("removed from master.toml"))


def _summary(change: Plan, notes: list[str]) -> str:
    if change.empty and not notes:
        return "no changes"
    parts = []
    for label, names in (("slaves added", change.slaves_added),
                         ("slaves removed", change.slaves_removed),
                         ("slaves changed", change.slaves_changed),
                         ("builders added", change.builders_added),
                         ("builders removed", change.builders_removed),
                         ("builders changed", change.builders_changed),
                         ("settings changed", change.settings_changed)):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    if change.control_changed:
        parts.append("control users changed")
    parts += notes
    if change.needs_restart:
        parts.append(f"needs a restart: {', '.join(change.needs_restart)} (kept as running)")
    return "; ".join(parts)
