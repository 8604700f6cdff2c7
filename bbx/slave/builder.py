"""The slave-side SlaveBuilder: one per builder the master assigned; runs one command at a time.

The master gets a reference to each from Bot.setBuilderList and calls startCommand on it
(docs/protocol.md §3.2, §4.2). A builder outlives connections (§4.6): the same object is handed
back when the master reconnects and asks for the same builder again.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from bbx.pb import dialect
from bbx.pb.updates import UpdateBatcher
from bbx.slave import metrics
from bbx.slave.commands import registry
from bbx.slave.commands.base import DEFAULT_CONTEXT, CommandContext

log = Logger(namespace="bbx.slave")


def decode(value):
    """Python 2 (Buildbot 0.8) masters send text as bytes (docs/protocol.md §1.2): make it str.

    Recurses into lists, tuples and dicts (keys too); references and numbers pass through.
    surrogateescape keeps non-UTF-8 paths byte-exact on POSIX.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, dict):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(decode(v) for v in value)
    return value


class SlaveBuilder(pb.Referenceable):
    """The slave's half of one builder: a build directory and at most one running command."""

    def __init__(self, name: str, basedir: str, builddir: str, reactor, *,
                 shutdown: Callable[[], None] | None = None,
                 context: CommandContext = DEFAULT_CONTEXT):
        self.name = name
        self.context = context
        self.basedir = basedir
        self.builddir = builddir
        self.reactor = reactor
        self._shutdown = shutdown
        self.remote = None  # the master-side builder, from setMaster (0.8 masters only)
        self.command = None  # the running Command, if any
        self._runs: set[defer.Deferred] = set()  # one per command not yet completed
        self.ensure_builddir()

    @property
    def builder_dir(self) -> str:
        """Where this builder's commands run: <basedir>/<builddir>."""
        return os.path.join(self.basedir, self.builddir)

    def set_builddir(self, builddir: str) -> None:
        """The master moved this builder to another directory."""
        if builddir != self.builddir:
            self.builddir = builddir
            self.ensure_builddir()

    def ensure_builddir(self) -> None:
        os.makedirs(self.builder_dir, exist_ok=True)

    # -- called by the master ----------------------------------------------------------------

    def remote_setMaster(self, remote) -> None:
        """0.8 masters send a ref to their side of this builder right after setBuilderList.

        Gets: `remote`, a RemoteReference. Returns None. We only keep it.
        """
        self.remote = remote

    def remote_print(self, message: str = "") -> float:
        """0.8 masters send "attached" and pings here. Gets: `message` (str). Returns this
        slave's clock, as Bot.print does (bbx/pb/clock.py)."""
        log.info("builder {builder}: message from master: {message}", builder=self.name,
                 message=decode(message))
        return self.reactor.seconds()

    def remote_startBuild(self) -> None:
        """A build is about to start on this builder. Gets nothing; returns None."""

    def remote_startCommand(self, stepRef, command_id, name, args) -> None:
        """Start one command and return at once.

        Gets: `stepRef` (ref to the master's RemoteCommand, with update/complete), `command_id`
        (str), `name` (e.g. "shell"), `args` (dict, either generation's names). Returns None
        immediately; errors in the request itself (unknown command, one this slave does not
        allow, missing or bad arguments) are raised here and reach the master as the error
        reply (docs/protocol.md §3.2), a pb.Error with a one-line message. The outcome arrives later
        as stepRef.update(...) calls and one stepRef.complete(None | failure).
        """
        name, command_id, args = decode(name), decode(command_id), decode(args or {})
        try:
            cls = registry.lookup(name, self.context.allowed, self.context.slave_name)
        except registry.UnknownCommand as e:
            log.warn("builder {builder}: refused command {id}: {why}", builder=self.name,
                     id=command_id, why=e)
            raise
        if self.command is not None:
            # Only one command per builder; a new one replaces a leftover (docs/protocol.md §4.2).
            log.warn("builder {builder}: leftover command still running; interrupting it",
                     builder=self.name)
            self._interrupt_current("replaced by a new command")
            self.command = None
        args = dialect.args_from_master(name, args)
        metrics.COMMANDS.inc(command=name)
        batcher = UpdateBatcher(lambda pairs: metrics.sent(pairs) or stepRef.callRemote("update", pairs),
                                self.reactor)
        self.ensure_builddir()
        cmd = cls(reactor=self.reactor, builder_dir=self.builder_dir, command_id=command_id,
                  args=args, updates=batcher, context=self.context)
        self.command = cmd

        def step_lost(_ref=None):
            log.info("builder {builder}: lost the master's step; interrupting command {id}",
                     builder=self.name, id=command_id)
            cmd.interrupt("connection lost")

        stepRef.notifyOnDisconnect(step_lost)
        log.info("builder {builder}: starting command {id}: {name}", builder=self.name, id=command_id,
                 name=name)
        run = self._run(cmd, batcher, stepRef, step_lost)
        if not run.called:
            self._runs.add(run)
            run.addBoth(lambda _: self._runs.discard(run))
        return None

    def remote_interruptCommand(self, command_id, why) -> None:
        """Interrupt the running command. Gets: `command_id` (ignored: there is only one running
        command per builder, docs/protocol.md §3.2) and `why` (str). Returns None; the command still
        ends with its usual updates and complete."""
        if self.command is None:
            log.info("builder {builder}: asked to interrupt, but no command is running",
                     builder=self.name)
            return
        why = decode(why)
        log.info("builder {builder}: interrupting command {id}: {why}", builder=self.name,
                 id=decode(command_id), why=why)
        self._interrupt_current(str(why))

    def remote_shutdown(self) -> None:
        """0.8-era builder-level shutdown (masters older than 0.8.3 use it): stop the slave.

        Gets nothing; returns None.
        """
        log.info("builder {builder}: master asked the slave to shut down", builder=self.name)
        if self._shutdown is not None:
            self._shutdown()

    # -- lifecycle ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _run(self, cmd, batcher, stepRef, step_lost):
        result = None
        try:
            yield defer.maybeDeferred(cmd.start)
        except Exception:
            # A plain Failure cannot be jellied; the Copyable form travels (docs/protocol.md §1.2).
            result = pb.failure2Copyable(Failure(), unsafeTracebacks=True)
            log.warn("builder {builder}: command {id} failed: {why}", builder=self.name,
                     id=cmd.command_id, why=result.getErrorMessage())
        yield batcher.flush()
        if self.command is cmd:
            self.command = None
        try:
            stepRef.dontNotifyOnDisconnect(step_lost)
        except (ValueError, KeyError):
            pass
        try:
            yield stepRef.callRemote("complete", result)
        except Exception:
            log.info("builder {builder}: could not report the end of command {id}: {why}",
                     builder=self.name, id=cmd.command_id, why=Failure().getErrorMessage())
        else:
            log.info("builder {builder}: command {id} complete", builder=self.name, id=cmd.command_id)

    def _interrupt_current(self, why: str) -> None:
        cmd = self.command
        if cmd is None:
            return
        try:
            cmd.interrupt(why)
        except Exception:
            log.failure("builder {builder}: interrupting a command failed", builder=self.name)

    def stop(self, why: str) -> None:
        """Kill the running command, if any: the builder was removed or the connection died."""
        self._interrupt_current(why)

    def wait_idle(self) -> defer.Deferred:
        """Fires once every command started here has completed (or failed to report it)."""
        return defer.DeferredList(list(self._runs), consumeErrors=True)
