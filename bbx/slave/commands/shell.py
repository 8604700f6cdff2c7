"""The `shell` command: run a master-given command line in the builder's workdir (docs/protocol.md §5.4)."""

from __future__ import annotations

from twisted.internet import defer

from bbx.pb.interrupts import SIGKILL_TIME_ARG
from bbx.slave.runprocess import KILLED_RC, RunProcess

from .base import Command


class ShellCommand(Command):
    """Runs `command` (a list is exec'd, a string goes to /bin/sh -c) under `workdir`.

    The master sends every argument a Buildbot master sends (docs/protocol.md §5.4): workdir,
    command, env, want_stdout, want_stderr, timeout, maxTime, max_lines, sigtermTime,
    interruptSignal, initial_stdin, logfiles, usePTY, logEnviron, and bbx's own sigkillTime
    (docs/protocol.md §6.1). It gets back the worker's
    headers, `stdout`/`stderr`/`log` as produced, `failure_reason` on a timeout or max_lines,
    then `rc` (-1 when killed), the `elapsedTime` header and `elapsed` (not after an interrupt).
    A workdir that cannot be created fails the command (complete(failure)); a program that
    cannot be found gives a header saying so and rc 127, as a shell would.
    """

    name = "shell"
    required = ("workdir", "command")

    def setup(self, args: dict) -> None:
        # Built here so malformed arguments are refused in the startCommand reply (§3.2).
        self.process = RunProcess(
            self.reactor,
            args["command"],
            workdir=self.resolve(args["workdir"]),
            env=args.get("env"),
            updates=self.updates,
            want_stdout=args.get("want_stdout", True),
            want_stderr=args.get("want_stderr", True),
            timeout=args.get("timeout"),
            max_time=args.get("maxTime"),
            max_lines=args.get("max_lines"),
            sigterm_time=args.get("sigtermTime"),
            interrupt_signal=args.get("interruptSignal") or "KILL",
            sigkill_time=args.get(SIGKILL_TIME_ARG),
            initial_stdin=args.get("initial_stdin"),
            use_pty=args.get("usePTY", False),
            logfiles=args.get("logfiles"),
            log_environ=args.get("logEnviron", True),
            containment=self.context.containment,
            secret_names=self.context.secret_names,
        )
        self.started = False

    def start(self) -> defer.Deferred:
        if self.interrupted:
            self.updates.add("header", "command interrupted before it started\n")
            self.updates.add("rc", KILLED_RC)
            return defer.succeed(KILLED_RC)
        self.started = True
        return self.process.start()

    def interrupt(self, why: str) -> None:
        super().interrupt(why)
        if self.started:
            reason = f"command interrupted ({why})" if why else "command interrupted"
            self.process.kill(reason)


COMMANDS = (ShellCommand,)
