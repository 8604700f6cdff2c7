"""`bbx run`: run one command on a slave of a builder and paint its output live.

`run` parses the options; `RunSession` is the conversation with the master (start the
command with an observer, handle Ctrl-C, collect the result); `run_exit` turns the result
into bbx's exit code. Twisted is imported only inside the session, so `bbx --help` stays fast.
"""

import sys
from typing import Annotated

import typer

from bbx.pb.interrupts import DEFAULT_INTERRUPT_SIGNAL, DEFAULT_KILL_AFTER

from .client import (CaOption, ConnectTimeoutOption, FingerprintOption, InsecureOption,
                     MasterDirOption, MasterOption, PasswordOption, UserOption)
from .output import conn, consoles, json_line

# Exit codes of `bbx run` besides the command's own rc (documented in its --help).
EXIT_COULD_NOT_RUN = 1
EXIT_TIMEOUT = 124        # like GNU timeout(1)
EXIT_KILLED = 137         # 128 + SIGKILL: killed by a signal, not by this bbx's Ctrl-C
EXIT_INTERRUPTED = 130    # 128 + SIGINT: the operator pressed Ctrl-C
EXIT_PIPE_CLOSED = 141    # 128 + SIGPIPE: our stdout reader went away, the command was interrupted
EXIT_LOST = 255           # lost the slave or the master while the command ran (like ssh)

# How often the terminal status line (elapsed time, bytes) is redrawn, in seconds.
STATUS_INTERVAL = 0.25

# A lone command word containing any of these was probably meant for a shell.
_SHELL_SYNTAX = set(" \t|&;<>()$`\\\"'*?[#~=%")

RUN_HELP = """Run CMD ARG... on a slave of BUILDER and show its output live.

Put `--` before the command so its options are not taken for bbx's: `bbx run linux -- make -j4 check`. The argv is executed as given (no shell); with --shell the words are joined with spaces and run by /bin/sh -c on the slave: `bbx run linux --shell -- 'make && make check'`.

On a terminal the header shows the command and its directory; --verbose adds the environment and Buildbot's bookkeeping lines (all of them are stored: `bbx log` shows them). When stdout is not a terminal, the command's stdout goes to bbx's stdout byte for byte and everything else (its stderr, every header line, the final status) to bbx's stderr, so `bbx run b -- make | grep error` works.

Ctrl-C interrupts the command: --signal (default TERM) goes to its whole process tree, SIGKILL follows --kill-after seconds later (default 10), and bbx waits for the end. A second Ctrl-C sends SIGKILL at once; a third leaves without waiting. When every slave of the builder is busy, the command waits for one, showing its place in line (Ctrl-C leaves the line; nothing ran); --no-wait-for-slave fails at once instead.

\b
Exit status:
  0-255  the command's own exit code
  124    the command was killed by --timeout or --max-time
  130    interrupted by Ctrl-C
  137    the command was killed by a signal (interrupted from elsewhere, too much output)
  141    bbx's stdout was closed (e.g. `| head`); the command was interrupted
  255    the connection to the slave or to the master was lost during the command
  1      the command could not be started (or its rc was outside 0-255)
  2, 3, 4, 5  bad usage, master unreachable, login refused, no such builder
"""


def register(app: typer.Typer) -> None:
    """Add `bbx run` to the top-level app."""
    app.command("run", help=RUN_HELP, context_settings={"allow_interspersed_args": True})(run)


def run(
    builder: Annotated[str, typer.Argument(help="The builder whose slave runs the command.")],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).",
                                                 show_default=False)],
    workdir: Annotated[str | None, typer.Option(
        "--workdir", help="Directory to run in, relative to the builder's directory on the slave.")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", help="K=V added to the command's environment; repeatable.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="Kill the command after this many seconds without output.")] = None,
    max_time: Annotated[float | None, typer.Option(
        "--max-time", min=0, help="Kill the command after this many seconds in all.")] = None,
    shell: Annotated[bool, typer.Option(
        "--shell", help="Join the words with spaces and run them with /bin/sh -c on the slave.")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="Print each update as a JSON line, then a final result object.")] = False,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Do not mask secret-looking NAME=value lines of the command's header.")] = False,
    log_environ: Annotated[bool, typer.Option(
        "--log-environ", help="Have the slave list the command's whole environment in its header "
        "(as Buildbot steps do; off by default for bbx run).")] = False,
    interrupt_signal: Annotated[str, typer.Option(
        "--signal", metavar="SIG", help="What Ctrl-C (or bbx cancel, or a timeout) sends first "
        "to the command's tree.")] = DEFAULT_INTERRUPT_SIGNAL,
    kill_after: Annotated[float, typer.Option(
        "--kill-after", min=0, help="Seconds from --signal to SIGKILL.")] = DEFAULT_KILL_AFTER,
    no_wait_for_slave: Annotated[bool, typer.Option(
        "--no-wait-for-slave", help="Fail at once when every slave of the builder is busy "
        "(by default the command waits for one).")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show every header line (environment, Buildbot's bookkeeping) "
        "on a terminal too.")] = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None,
    connect_timeout: ConnectTimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Run a command on a slave (the operator-facing help is RUN_HELP)."""
    from bbx.pb.interrupts import BadSignal, kill_after as kill_after_seconds, signal_name

    from .errors import UsageError

    try:
        interrupt_signal = signal_name(interrupt_signal)
        kill_after = kill_after_seconds(kill_after)
    except BadSignal as e:
        raise UsageError(f"--signal {e}") from None
    except ValueError as e:
        raise UsageError(f"--kill-after: {e}") from None
    environment = {}
    for item in env or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {item!r} is not K=V; write e.g. --env CC=clang")
        environment[name] = value
    if not command:
        raise UsageError("no command given; write it after --, e.g. bbx run BUILDER -- make check")
    argv: list[str] | str = " ".join(command) if shell else list(command)
    out, err = consoles()
    if not shell and len(command) == 1 and _SHELL_SYNTAX & set(command[0]):
        err.print(f"bbx: note: running {command[0]!r} as one program name; add --shell to run it "
                  "with /bin/sh -c", highlight=False, soft_wrap=True, markup=False)

    from .client import call

    session = RunSession(out, err, json=json, show_secrets=show_secrets, verbose=verbose)
    request = dict(builder=builder, command=argv, workdir=workdir, env=environment,
                   timeout=timeout, max_time=max_time, log_environ=log_environ,
                   interrupt_signal=interrupt_signal, kill_after=kill_after,
                   wait_for_slave=not no_wait_for_slave)
    call(conn(master_dir, master, user, password, connect_timeout, ca, fingerprint, insecure),
         lambda perspective, reactor: session.run(perspective, reactor, **request))
    exit_code = session.report()
    raise typer.Exit(exit_code)


def run_exit(result: dict, *, failure_reason: str | None, operator_interrupted: bool,
             pipe_closed: bool) -> tuple[int, str]:
    """The exit code of `bbx run` and the one line explaining it, from the final result.

    `result` is the control contract's {"rc", "failure", "interrupted", "lost"}, plus
    "master_lost" when our own connection to the master went away first.
    """
    rc = result.get("rc")
    failure = result.get("failure")
    if result.get("master_lost"):
        return EXIT_LOST, "lost the connection to the master; the command may still be running"
    if result.get("left_queue"):
        return EXIT_INTERRUPTED, "left the line before a slave was free; nothing ran"
    if result.get("left"):
        return EXIT_INTERRUPTED, "left without waiting; the command may still be running on the slave"
    if result.get("lost"):
        return EXIT_LOST, failure or "lost the connection to the slave while the command ran"
    if pipe_closed and (rc is None or rc == -1 or result.get("interrupted")):
        return EXIT_PIPE_CLOSED, "stdout was closed, so the command was interrupted"
    if operator_interrupted and (rc is None or rc == -1 or result.get("interrupted")):
        return EXIT_INTERRUPTED, "interrupted by operator"
    if failure_reason == "timeout_without_output":
        return EXIT_TIMEOUT, "killed: no output for longer than --timeout"
    if failure_reason == "timeout":
        return EXIT_TIMEOUT, "killed: ran longer than --max-time"
    if rc is None:
        return EXIT_COULD_NOT_RUN, failure or "the command ended without an exit code"
    if failure_reason == "max_lines_failure":
        return EXIT_KILLED, "killed: too much output"
    if rc == -1:
        why = "interrupted (not by this bbx)" if result.get("interrupted") else "killed by a signal"
        return EXIT_KILLED, f"command {why}"
    if rc == 0:
        return 0, "command succeeded"
    if 0 < rc < 256:
        return rc, f"command failed with exit code {rc}"
    return EXIT_COULD_NOT_RUN, f"command failed with exit code {rc} (outside 0-255)"


class RunSession:
    """One `bbx run`: start the command, paint its updates, handle Ctrl-C, decide the exit code.

    `run(perspective, reactor, ...)` is the conversation handed to client.call; it fires with
    the final result once the master calls our observer's `complete` (or the master goes
    away, or the operator presses Ctrl-C twice). `report()` then prints the summary.
    """

    INTERRUPT_WHY = "interrupted by operator"

    def __init__(self, out, err, *, json: bool = False, show_secrets: bool = False,
                 verbose: bool = False):
        self.out, self.err, self.json, self.show_secrets = out, err, json, show_secrets
        self.waiting: dict | None = None  # the master's last `waiting` notice, until started
        self._gate = None
        self.slave = "?"
        self.result: dict | None = None
        self.failure_reason: str | None = None
        self.rc = None
        self.sigints = 0
        self.pipe_closed = False
        self.handle = None
        self.started_at = 0.0
        self.ended_at = 0.0
        from .sinks import header_filter, make_sink

        self.sink = make_sink(out, err, json)
        self.headers = header_filter(self.sink, verbose)

    # -- the conversation

    async def run(self, perspective, reactor, *, builder, command, workdir, env, timeout, max_time,
                  log_environ=False, interrupt_signal=DEFAULT_INTERRUPT_SIGNAL,
                  kill_after=DEFAULT_KILL_AFTER, wait_for_slave=True):
        import signal

        from twisted.internet import defer, task

        from .sinks import TerminalOutput

        self.reactor = reactor
        self.builder = builder
        self.done = defer.Deferred()
        self.started_at = reactor.seconds()
        observer = _observer_class()(self)
        perspective.notifyOnDisconnect(lambda _: self._finish({"master_lost": True}))
        # Replaces Twisted's own SIGINT handler (which would just stop the reactor): the first
        # Ctrl-C interrupts the command and keeps waiting for `complete`.
        signal.signal(signal.SIGINT, lambda _signum, _frame: reactor.callFromThread(self._sigint))
        ticker = None
        if isinstance(self.sink, TerminalOutput):
            ticker = task.LoopingCall(self._tick)
            ticker.clock = reactor
            ticker.start(STATUS_INTERVAL)
        try:
            call = perspective.callRemote("run", builder, observer, command, workdir, env,
                                          timeout, max_time, log_environ, interrupt_signal,
                                          kill_after, wait_for_slave)
            # While the command waits for a slave, Ctrl-C leaves the line: the gate fires
            # without an answer, and our disconnecting takes us off the master's line.
            self._gate = gate = defer.Deferred()
            call.addBoth(lambda answer: None if gate.called else gate.callback(answer))
            started = await gate
            if started is None:
                self.result = {"left_queue": True}
                return self.result
            if self.waiting is not None:
                self.waiting = None
                if hasattr(self.sink, "clear_status"):
                    self.sink.clear_status()
            self.slave = str(started.get("slave", "?"))
            self.handle = started.get("handle")
            if self.sigints or self.pipe_closed:
                self._interrupt("output pipe closed" if self.pipe_closed else self.INTERRUPT_WHY)
            self.result = await self.done
        finally:
            self.ended_at = reactor.seconds()
            if ticker is not None and ticker.running:
                ticker.stop()
        return self.result

    def _finish(self, result: dict) -> None:
        if not self.done.called:
            self.done.callback(result)

    def _tick(self) -> None:
        from .render import run_status

        if self.waiting is not None:
            from .render import waiting_status

            self.sink.status(waiting_status(self.waiting, self.reactor.seconds() - self.started_at))
            return
        where = f"builder {self.builder}" if self.slave == "?" else f"slave {self.slave}"
        self.sink.status(run_status(where, self.reactor.seconds() - self.started_at, self.sink.nbytes))

    def _sigint(self) -> None:
        self.sigints += 1
        if self.handle is None and self.waiting is not None and self._gate is not None:
            if not self._gate.called:
                self._gate.callback(None)
            return
        if self.sigints == 1:
            self._note("interrupting the command (Ctrl-C again to kill it at once)")
            self._interrupt(self.INTERRUPT_WHY)
        elif self.sigints == 2:
            self._note("killing the command (Ctrl-C again to leave at once)")
            self._interrupt(self.INTERRUPT_WHY, now=True)
        else:
            self._finish({"left": True})

    def waiting_for_slave(self, info) -> None:
        """The master's notice that the command waits for a free slave (its place in line)."""
        if not isinstance(info, dict) or self.handle is not None:
            return
        first = self.waiting is None
        self.waiting = info
        if self.sigints and self._gate is not None and not self._gate.called:
            self._gate.callback(None)  # Ctrl-C came before we knew we would wait
            return
        if self.json:
            json_line({"waiting": info})
        elif first or not hasattr(self.sink, "clear_status"):
            from .render import waiting_line

            self._note(waiting_line(info))

    def _interrupt(self, why: str, now: bool = False) -> None:
        if self.handle is None:
            return  # sent as soon as `run` answers
        self.handle.callRemote("interrupt", why, now).addErrback(
            lambda f: self._note(f"could not interrupt: {f.getErrorMessage()}"))

    def _note(self, text: str) -> None:
        from .sinks import note

        note(self.sink, self.err, text)

    # -- what the observer receives

    def update(self, updates) -> None:
        from bbx.pb.updates import iter_updates

        from .masks import mask_header

        if self.json:
            import json

            for key, value in iter_updates(updates):
                self._record(key, value)
                if key == "header" and isinstance(value, str):
                    value = mask_header(value, self.show_secrets)
                sys.stdout.write(json.dumps({key: value}) + "\n")
            sys.stdout.flush()
            return
        from .sinks import paint_updates

        sink = self.sink
        paint_updates(sink, updates, self.show_secrets, self._record, self.headers)
        if sink.broken_pipe and not self.pipe_closed:
            self.pipe_closed = True
            self._interrupt("output pipe closed")

    def _record(self, key: str, value) -> None:
        if key == "rc":
            self.rc = value
        elif key == "failure_reason":
            self.failure_reason = str(value)

    def complete(self, result) -> None:
        if not isinstance(result, dict):
            result = {"rc": self.rc, "failure": None if result is None else str(result),
                      "interrupted": False, "lost": False}
        self._finish(result)

    # -- the end

    def report(self) -> int:
        """Print the summary line (stderr unless on a terminal); return bbx's exit code."""
        result = self.result or {"master_lost": True}
        code, message = run_exit(result, failure_reason=self.failure_reason,
                                 operator_interrupted=self.sigints > 0, pipe_closed=self.pipe_closed)
        elapsed = self.ended_at - self.started_at
        if self.json:
            json_line({"result": result, "slave": self.slave, "exit_code": code,
                            "message": message, "failure_reason": self.failure_reason,
                            "elapsed": round(elapsed, 3)})
            if code != 0:
                sys.stderr.write(f"bbx: {message}\n")
            return code
        from .sinks import PipeOutput

        if isinstance(self.sink, PipeOutput) and not self.err.is_terminal:
            from .text import run_summary_line

            self.sink.finish(run_summary_line(message, code, elapsed, self.sink.nbytes))
        else:
            from .render import run_summary

            self.sink.finish(run_summary(message, code, elapsed, self.sink.nbytes))
        return code


_OBSERVER = None


def _observer_class():
    """The pb.Referenceable the master calls with updates (defined late: Twisted is heavy)."""
    global _OBSERVER
    if _OBSERVER is None:
        from twisted.spread import pb

        class CommandObserver(pb.Referenceable):
            """The CLI's end of a running command, handed to the master's `run`.

            The master calls `update(updates)` with the slave's envelope list
            ([[{key: value}, 0], ...]) and gets None back once it is painted — so a slow
            terminal or pipe slows the command (flow control) — and `complete(result)` once,
            with {"rc", "failure", "interrupted", "lost"}; answered with None.
            """

            def __init__(self, session: RunSession):
                self.session = session

            def remote_update(self, updates):
                """Paint the updates; None when done."""
                self.session.update(updates)
                return None

            def remote_waiting(self, info):
                """Every slave is busy: {"builder", "position" (1 = next), "busy": [slaves]},
                sent again when the position changes. Returns None."""
                self.session.waiting_for_slave(info)
                return None

            def remote_complete(self, result=None):
                """The command ended; `result` describes how. Returns None."""
                self.session.complete(result)
                return None

        _OBSERVER = CommandObserver
    return _OBSERVER
