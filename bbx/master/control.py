"""ControlPerspective: what an operator's CLI may ask the master (bbx/pb/control.py names the errors)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb

from bbx.pb.clock import offset as clock_offset, peer_time
from bbx.pb.control import (CommandFailed, NoSteps, ControlError, NoSlaveAttached, SlaveBusy,
                            UnknownBuild, UnknownBuilder, UnknownSlave)
from bbx.pb.interrupts import (DEFAULT_INTERRUPT_SIGNAL, DEFAULT_KILL_AFTER,
                               kill_after as kill_after_seconds, signal_name)

from .build import CommandStartFailed, error_line
from .command import RemoteCommand, RemoteObserver
from .config import DEFAULT_STEP_WORKDIR, StepConfig, workdir_problem
from . import farmstate
from .control_farm import FarmControl
from .runwait import RunWaiter
from .store import NoSuchBuild, NoSuchStep, StoreError

log = Logger()

# What a Buildbot 4.3 master sends with every shell command (docs/protocol.md §5.4, §10.1 item 4);
# `timeout` (seconds without output) defaults to 1200 there.
DEFAULT_SHELL_TIMEOUT = 1200
# Largest log page one `log` call returns: a few store rows (<= 64 KiB each), far below
# banana's 640 KiB limit on one PB string or list (docs/protocol.md §6).
MAX_LOG_PAGE = 256 * 1024
# The longest a `log` call may wait for new text before answering "nothing new yet": short
# enough that a CLI whose master vanished notices within seconds.
MAX_LOG_WAIT = 10.0
# The most builds one `builds` answer lists, so a careless --limit cannot make the master read
# and send its whole history at once.
MAX_BUILDS_LISTED = 1000


class CommandHandle(pb.Referenceable):
    """Given to the CLI that started a command, so it can interrupt it."""

    def __init__(self, command: RemoteCommand):
        self.command = command

    def remote_interrupt(self, why: str = "interrupted by the operator", now: bool = False):
        """The CLI sends a reason (str) and whether to kill at once (bool: its second Ctrl-C);
        the command is interrupted; returns None at once.

        The command still ends through the observer's `complete` (docs/protocol.md §6).
        """
        self.command.interrupt(str(why), now=bool(now))
        return None


class ControlPerspective(FarmControl, pb.Avatar):
    """The avatar of one control user: ping, info, slaves, builders, run, build, builds,
    build_info, log, watch, cancel; pause, drain, resume (bbx/master/control_farm.py)."""

    def __init__(self, user: str, master):
        self.user = user
        self.master = master  # the MasterService: .slaves, .builders, .reactor

    def _builder(self, name: str):
        builder = self.master.builders.get(name)
        if builder is None:
            choices = ", ".join(sorted(self.master.builders)) or "none"
            raise UnknownBuilder(f"no builder named {name!r} (configured: {choices})")
        return builder

    @defer.inlineCallbacks
    def perspective_ping(self, builder: str, count: int = 1):
        """Ping the slave of `builder` `count` times (each with a 10 s deadline).

        Returns {"builder": str, "slave": str, "rtts": [seconds, ...], "slave_offsets":
        [seconds the slave's clock is ahead of the master's, or None when the slave does not
        report its clock], "received_at", "answered_at": the master's clock}. Raises
        UnknownBuilder, NoSlaveAttached or SlaveTimeout.
        """
        received_at = self.master.reactor.seconds()
        b = self._builder(builder)
        sb = b.any_attached()
        rtts, offsets = [], []
        for _ in range(max(1, int(count))):
            rtt = yield sb.ping()
            rtts.append(rtt)
            offsets.append(slave_offset(getattr(sb.link, "clock_sample", None)))
        return {"builder": b.name, "slave": sb.slave.name, "rtts": rtts, "slave_offsets": offsets,
                "received_at": received_at, "answered_at": self.master.reactor.seconds()}

    def perspective_clock(self):
        """No arguments. Returns the master's clock (seconds since the epoch), for the
        operator's clock offset (`bbx doctor`, bbx/pb/clock.py)."""
        return self.master.reactor.seconds()

    def perspective_info(self, slave: str | None = None):
        """What a slave reported about itself when it attached.

        Sends a slave name, or None for the only attached slave. Returns {"name", "dialect",
        "connected_since", "peer", "info": {info dict, str keys and values}, "commands":
        {command name: version}, whichever name the slave's generation gave that table}.
        Raises UnknownSlave,
        NoSlaveAttached, or ControlError when None is ambiguous.
        """
        slaves = self.master.slaves
        if slave is None:
            attached = [s for s in slaves.values() if s.link is not None]
            if not attached:
                raise NoSlaveAttached("no slave is attached")
            if len(attached) > 1:
                names = ", ".join(sorted(s.name for s in attached))
                raise ControlError(f"several slaves are attached ({names}); name one")
            persp = attached[0]
        else:
            persp = slaves.get(slave)
            if persp is None:
                choices = ", ".join(sorted(slaves)) or "none"
                raise UnknownSlave(f"no slave named {slave!r} (configured: {choices})")
            if persp.link is None:
                raise NoSlaveAttached(f"slave {slave} is not attached")
        link = persp.link
        return {"name": persp.name, "dialect": link.dialect.value,
                "connected_since": link.connected_since, "peer": link.peer, "info": link.info,
                "commands": link.commands}

    def perspective_slaves(self, connected: bool | None = None, counts: bool = False):
        """Sends nothing (every slave), or connected=True/False (only those attached to this
        master, or not). Returns one dict per slave: name, connected, connected_since,
        builders, dialect, last_message, peer, version, master (the master it is attached to:
        this one, another master of a shared store, or None); with counts=True only
        {"configured", "connected", "disconnected"} (cheap with 10,000 slaves)."""
        slaves = self.master.slaves.values()
        if counts:
            up = sum(1 for s in slaves if s.link is not None)
            return {"configured": len(slaves), "connected": up, "disconnected": len(slaves) - up}
        return self._store(self.master.slave_summaries(connected))

    def perspective_masters(self):
        """No arguments. Returns one dict per master of the store: name, state ("active",
        "stopped", "dead"), host, pid, endpoint, started_at, heartbeat_age (s), reason, this."""
        return self._store(self.master.masters_listing())

    def perspective_builders(self):
        """No arguments. Returns one dict per builder: name, slaves (the names it lists),
        tags (the tags it selects by, all needed), builddir, attached (attached slaves that
        may run it), usable (those of them that take work now: not paused or draining)."""
        out = []
        for b in self.master.builders.values():
            attached = b.attached()
            out.append({"name": b.name, "slaves": list(b.config.slaves),
                        "tags": list(b.config.tags), "builddir": b.config.builddir,
                        "attached": attached,
                        "usable": [n for n in attached if b.slave_builders[n].slave.takes_work]})
        return out

    @defer.inlineCallbacks
    def perspective_run(self, builder: str, observer, command, workdir: str | None = None,
                        env: dict | None = None, timeout: Any = DEFAULT_SHELL_TIMEOUT,
                        max_time: float | None = None, log_environ: bool = True,
                        interrupt_signal: str = DEFAULT_INTERRUPT_SIGNAL,
                        kill_after: float = DEFAULT_KILL_AFTER, wait_for_slave: bool = False):
        """Run one shell command on a free slave of `builder`, recorded as a one-step build.

        Sends the builder name, an observer Referenceable (remote_update(updates) /
        remote_complete(result), and remote_waiting({"builder", "position", "busy"}) while
        it waits), the command (list of str = exec, str = shell), workdir (None = "build"),
        env, timeout (s without output; None = none), max_time, log_environ (whether the
        slave lists the environment in its header), interrupt_signal and kill_after (an
        interrupt sends that signal, then SIGKILL after kill_after s) and wait_for_slave.
        Returns once the slave started it: {"slave", "command_id", "handle", "build_id"}
        where handle.callRemote("interrupt", why, now) interrupts. The observer gets every
        update envelope unchanged, then {"rc", "failure", "interrupted", "lost"}. With every
        slave busy it waits (wait_for_slave) or raises SlaveBusy; raises UnknownBuilder,
        NoSlaveAttached (none attached: never waits) or CommandFailed.
        """
        b = self._builder(builder)
        if not isinstance(command, (str, list, tuple)) or not command:
            raise CommandFailed("the command is empty")
        if workdir is not None and workdir_problem(workdir) is not None:
            # The same rule as a step's workdir in master.toml (config.workdir_problem).
            raise CommandFailed(f"workdir {workdir_problem(workdir)}; give a path relative to "
                                "the builder's directory, without '..'")
        try:
            first_signal, grace = signal_name(interrupt_signal), kill_after_seconds(kill_after)
        except ValueError as e:
            raise CommandFailed(f"bad interrupt: {e}") from None
        argv = tuple(command) if isinstance(command, (list, tuple)) else command
        first = argv[0] if isinstance(argv, tuple) else (argv.split() or ["sh"])[0]
        step = StepConfig(name=str(first).rsplit("/", 1)[-1] or "run", kind="shell",
                          command=argv, workdir=workdir or DEFAULT_STEP_WORKDIR,
                          env=tuple((env or {}).items()), timeout=timeout, max_time=max_time,
                          log_environ=bool(log_environ), interrupt_signal=first_signal,
                          sigterm_time=grace)
        holder: list = []
        waiting: list = []
        observers = []
        if observer is not None:
            def gone():
                if waiting and not waiting[0].done.called:
                    self.master.queue.run_waiters.remove(waiting[0])
                    waiting[0].done.errback(CommandFailed("the waiting client went away"))
                elif holder:
                    holder[0].interrupt("the watching client went away")
            observers.append(RemoteObserver(observer, on_gone=gone))

        def start(sb):
            return sb, self.master.queue.start_build(b, sb, [step], ping=False,
                                                     observers=observers)
        try:
            sb = b.idle_slave_builder()
        except SlaveBusy:
            paused = all(b.slave_builders[n].slave.operator_state != farmstate.ACTIVE
                         for n in b.attached())
            if not wait_for_slave or paused:
                raise  # only a busy slave ends by itself; a paused one waits for an operator
            waiter = RunWaiter(b.name, start, observer)
            waiting.append(waiter)
            log.info("{user}'s command waits for a free slave of builder {builder}",
                     user=self.user, builder=b.name)
            self.master.queue.run_waiters.add(waiter)
            sb, build = yield waiter.done
            waiting.clear()
        else:
            sb, build = start(sb)
        try:
            cmd = yield build.first_command
        except CommandStartFailed as e:
            raise CommandFailed(f"slave {sb.slave.name} could not start the command: {e}") from None
        except Exception as e:
            raise CommandFailed(f"slave {sb.slave.name} could not start the command: "
                                f"{error_line(e)}") from None
        holder.append(cmd)
        if observers and observers[0].gone:
            cmd.interrupt("the watching client went away")
        log.info("{user} runs {command!r} on builder {builder} (slave {slave}, build {build}, "
                 "command {id})", user=self.user, command=command, builder=b.name,
                 slave=sb.slave.name, build=build.build_id, id=cmd.command_id)
        return {"slave": sb.slave.name, "command_id": cmd.command_id,
                "handle": CommandHandle(cmd), "build_id": build.build_id}

    # -- builds ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def perspective_build(self, builder: str, observer=None, wait: bool = True,
                          reason: str = ""):
        """Queue a build of `builder` (its [[builders.steps]]).

        Sends the builder name, an optional observer Referenceable and whether it will wait.
        The observer (when wait) is called, one-way unless noted:
        remote_buildStarted({"build_id", "number", "builder", "slave", "request_id", "steps":
        [names], "started_at"}); remote_stepStarted({"build_id", "number", "name", "kind"});
        remote_update(updates) — the slave's envelopes unchanged, answered before more come
        (flow control); remote_stepFinished({... "result", "result_name", "rc", "duration"});
        remote_buildFinished({... "result", "result_name", "steps": [stepFinished infos],
        "requeued": bool, "duration", "cancelled", "lost"}). A RETRY with requeued=True is
        followed by buildStarted of the next attempt.
        Returns {"request_id": int, "build_id": None, "position": int|None, "attached":
        [slaves]} at once. Raises UnknownBuilder; a builder without steps raises
        CommandFailed (use `bbx run`).
        """
        b = self._builder(builder)
        if not b.config.steps:
            raise NoSteps(f"builder {b.name} has no steps; add [[builders.steps]] to it "
                                "in master.toml, or run a command with `bbx run`")
        request_id = yield self._store(self.master.queue.submit(
            b.name, reason or f"requested by {self.user}", observer if wait else None))
        log.info("{user} queued build request {id} for builder {builder}", user=self.user,
                 id=request_id, builder=b.name)
        position = yield self._store(defer.maybeDeferred(self.master.queue.position, request_id))
        return {"request_id": request_id, "build_id": None, "position": position,
                "attached": b.attached()}

    @defer.inlineCallbacks
    def perspective_builds(self, builder: str | None = None, limit: int = 20):
        """Recent builds, newest first. Sends a builder name (None = all) and how many.

        Returns a list of {"id", "builder", "number", "slave", "state", "result",
        "result_name", "started_at", "finished_at", "duration", "request_id", "reason",
        "interrupted_reason"}. Queued requests are listed by `queue`. Raises UnknownBuilder.
        """
        if builder is not None:
            self._builder(builder)
        limit = max(1, min(int(limit), MAX_BUILDS_LISTED))
        found = yield self._store(self.master.store.builds(builder, limit))
        return found

    def perspective_queue(self, builder: str | None = None):
        """Queued build requests, oldest first: [{"id", "builder", "submitted_at", "reason",
        "retries"}]. Sends a builder name or None for all (every master's, on a shared
        store)."""
        return self._store(self.master.queue.queued(builder))

    @defer.inlineCallbacks
    def perspective_build_info(self, build_id: int):
        """One build: as in `builds` plus "steps": [{"id", "number", "name", "started_at",
        "finished_at", "result", "result_name", "rc", "log_bytes"}]. Raises UnknownBuild."""
        info = yield self._store(self.master.store.build(_build_id(build_id)))
        return info

    @defer.inlineCallbacks
    def perspective_log(self, build_id: int, step=None, after_seq: int | None = None,
                        max_bytes: int = MAX_LOG_PAGE, wait: float = 0):
        """A page of a build's stored log, in the order received.

        Sends the build id, a step (number or name; None = every step), the last seq already
        seen (None = from the start), a size wish (capped at MAX_LOG_PAGE) and how long to
        wait for new text (s, capped at MAX_LOG_WAIT; 0 = answer at once). Returns
        {"chunks": [[seq, step_number, stream, text], ...], "finished": bool} — stream is
        stdout, stderr, header or log:<name>; an empty page with finished=False means "nothing
        new yet". With `wait`, an empty page is only sent once the build has ended or the
        wait is over: the master hears of new rows from its own commits and, on a shared
        store, from the master running the build (NOTIFY), without polling.
        Raises UnknownBuild (also for an unknown step).
        """
        build_id = _build_id(build_id)
        store = self.master.store
        try:
            wait = max(0.0, min(float(wait or 0), MAX_LOG_WAIT))
        except (TypeError, ValueError):
            wait = 0.0  # not a number: answer at once, as an older CLI asks
        # Subscribed before reading, so a row committed between the read and the wait wakes us.
        woken = store.events.wait(self.master.reactor, wait, {
            "log": lambda _s, b, *a: b == build_id,
            "build": lambda _s, b, *a: b == build_id}) if wait else None
        # Read the state first: a build seen finished has every chunk in the store already.
        info = yield self._store(store.build_brief(build_id))
        if info is None:
            yield self._store(store.build(build_id))  # NoSuchBuild, in its words
        size = max(1, min(int(max_bytes or MAX_LOG_PAGE), MAX_LOG_PAGE))
        rows = yield self._store(store.log(build_id, step, after_seq, size, with_step=True))
        if not rows and info["finished_at"] is None and woken is not None:
            yield woken
            info = yield self._store(store.build_brief(build_id))
            rows = yield self._store(store.log(build_id, step, after_seq, size, with_step=True))
        elif woken is not None:
            woken.cancel()  # stops listening; fires it with None
        return {"chunks": [list(r) for r in rows], "finished": info["finished_at"] is not None,
                "result_name": info["result_name"]}

    def perspective_watch(self, build_id: int, observer):
        """Watch a running build live: `observer` gets the calls described under `build`
        from now on (stepStarted, update, stepFinished, buildFinished; buildStarted first).
        Returns the build's info dict, or None when the build is not running (read its
        stored log instead)."""
        build_id = _build_id(build_id)
        build = self.master.queue.find_running(build_id)
        if build is None:
            follow = getattr(self.master.queue, "follow", None)
            if follow is None:
                return None
            return self._watch_elsewhere(build_id, observer)
        build.watch(observer)
        return build.info()

    @defer.inlineCallbacks
    def _watch_elsewhere(self, build_id: int, observer):
        """A build another master of the shared store runs: followed through the store."""
        brief = yield self._store(self.master.store.build_brief(build_id))
        if brief is None or brief["finished_at"] is not None:
            return None
        feed = self.master.queue.follow(build_id, brief["request_id"], [observer])
        return feed.info or {"build_id": build_id, "number": brief["number"],
                             "builder": brief["builder"], "slave": brief["slave"],
                             "request_id": brief["request_id"], "steps": [],
                             "started_at": brief["started_at"], "master": brief["master"]}

    @defer.inlineCallbacks
    def perspective_request(self, request_id: int):
        """Sends a build request id. Returns {"request_id", "builder", "state" ("queued",
        "claimed", "done"), "build_id"} — the newest build serving it, None until one started.
        Raises UnknownBuild for an unknown request."""
        state = yield self._store(self.master.store.request_state(_build_id(request_id)))
        if state is None:
            raise UnknownBuild(f"no build request {request_id}; `bbx builds` lists them")
        return state

    @defer.inlineCallbacks
    def perspective_cancel(self, build_id: int | None = None, request_id: int | None = None):
        """Cancel a running build (its step is interrupted; result CANCELLED) or remove a
        queued request. Sends a build id, or None and a request id.
        Returns {"build_id", "request_id", "state": "cancelling" | "removed"}.
        Raises UnknownBuild when no such build is running or no such request is queued
        (a finished build cannot be cancelled)."""
        queue = self.master.queue
        if build_id is None:
            if request_id is None:
                raise UnknownBuild("name a build id or a request id to cancel")
            request_id = _build_id(request_id)
            if queue.position(request_id) is not None or self.master.store.shared:
                try:
                    answer = yield self._store(queue.cancel_request(request_id))
                    return answer
                except UnknownBuild:
                    pass  # not queued (any more): its build, if it runs, is cancelled below
            state = yield self._store(self.master.store.request_state(request_id))
            if state is None or state["build_id"] is None:
                raise UnknownBuild(f"no queued build request {request_id}, nor a running "
                                   "build for it; `bbx builds` lists them")
            build_id = state["build_id"]
        build_id = _build_id(build_id)
        build = queue.find_running(build_id)
        if build is None:
            store = self.master.store
            if store.shared:
                elsewhere = yield self._store(store.request_cancel(build_id, self.user))
                if elsewhere is not None:
                    log.info("{user} cancels build {id}, running on master {m}",
                             user=self.user, id=build_id, m=elsewhere)
                    brief = yield self._store(store.build_brief(build_id))
                    return {"build_id": build_id, "request_id": brief["request_id"],
                            "state": "cancelling", "master": elsewhere}
            info = yield self._store(store.build(build_id))
            raise UnknownBuild(f"build {build_id} is not running (it ended "
                               f"{info['result_name'].upper()}); nothing to cancel")
        build.cancel(f"cancelled by {self.user}")
        return {"build_id": build_id, "request_id": build.request_id, "state": "cancelling"}

    @defer.inlineCallbacks
    def _store(self, d):
        """A store answer, with store errors turned into errors the CLI shows as one line."""
        try:
            value = yield d
        except (NoSuchBuild, NoSuchStep) as e:
            raise UnknownBuild(str(e)) from None
        except StoreError as e:
            raise ControlError(str(e)) from None
        return value


def slave_offset(sample) -> float | None:
    """(sent, answer, received) of a ping -> the slave's clock offset, None if unknown."""
    if not sample:
        return None
    sent, answer, received = sample
    when = peer_time(answer)
    return None if when is None else clock_offset(sent, when, when, received)


def _build_id(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UnknownBuild(f"{value!r} is not a build id; `bbx builds` lists them") from None
    if number < 1:
        raise UnknownBuild(f"{value!r} is not a build id; `bbx builds` lists them")
    return number
