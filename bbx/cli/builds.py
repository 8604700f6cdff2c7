"""`bbx build`: queue a build and paint it live (history.py: builds | log | cancel).

The command parses its options, then imports Twisted, rich and the client inside its body,
so `bbx --help` stays fast.
"""

from typing import Annotated

import typer

from .client import (CaOption, FingerprintOption, InsecureOption, MasterDirOption, MasterOption,
                     PasswordOption, TimeoutOption, UserOption)
from .output import conn, consoles, json_line, print_json

# Exit codes of `bbx build`.
EXIT_BUILD_BAD = 1          # FAILURE, EXCEPTION, CANCELLED, RETRY (not requeued), SKIPPED
EXIT_INTERRUPTED = 130      # left with Ctrl-C before the build ended
EXIT_LOST = 255             # lost the connection to the master while waiting
# Results whose build counts as good (bbx.master.results: SUCCESS=0, WARNINGS=1).
GOOD_RESULTS = ("success", "warnings")
# How often the "waiting in the queue" line is redrawn on a terminal, in seconds.
WAITING_INTERVAL = 0.5
# How long `bbx build --no-wait` waits for the build id of a request that started at once
# (a free slave: the master is recording the build): long enough for a loaded master to
# answer, short enough for a script. A request that waits in the queue is not waited for.
NO_WAIT_BUILD_ID = 5.0

BUILD_HELP = """Queue a build of BUILDER (the steps master.toml gives it) and show each step live.

The build waits in the master's queue while every slave of the builder is busy or absent. Each step gets a rule with its name; its output is shown as `bbx run` shows it (on a terminal without the environment and Buildbot's bookkeeping header lines unless --verbose), under a status line (step n of m, elapsed time, bytes); a table of step results ends the build. With --no-wait bbx prints the request id and exits: when a slave was free it first waits (up to 5 s) for the build to start and prints its build id too; `bbx log --request N` and `bbx cancel --request N` find the build later. Ctrl-C cancels the build (and still waits for it to end); a second Ctrl-C leaves at once.

\b
Exit status:
  0      the build ended SUCCESS or WARNINGS (or --no-wait queued it)
  1      the build ended FAILURE, EXCEPTION, CANCELLED or RETRY
  130    left with a second Ctrl-C; the build may still be running
  255    lost the connection to the master
  2, 3, 4, 5  bad usage, master unreachable, login refused, no such builder
"""


def register(app: typer.Typer) -> None:
    """Add `bbx build` to the top-level app (history.py has builds, log and cancel)."""
    app.command("build", help=BUILD_HELP)(build)


# ---------------------------------------------------------------------------- build


def build(
    builder: Annotated[str, typer.Argument(help="The builder to build.")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Queue the build and exit.")] = False,
    json: Annotated[bool, typer.Option(
        "--json", help="Print each event and update as a JSON line, then the result.")] = False,
    show_secrets: Annotated[bool, typer.Option(
        "--show-secrets", help="Do not mask secret-looking NAME=value lines of headers.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show every header line (environment, Buildbot's bookkeeping) "
        "on a terminal too.")] = False,
    master_dir: MasterDirOption = None, master: MasterOption = None,
    user: UserOption = None, password: PasswordOption = None, timeout: TimeoutOption = 10.0,
    ca: CaOption = None, fingerprint: FingerprintOption = None, insecure: InsecureOption = False,
) -> None:
    """Queue a build (the operator-facing help is BUILD_HELP)."""
    from .client import call

    out, err = consoles()
    session = BuildSession(out, err, json=json, show_secrets=show_secrets, verbose=verbose)
    call(conn(master_dir, master, user, password, timeout, ca, fingerprint, insecure),
         lambda perspective, reactor: session.run(perspective, reactor, builder, not no_wait))
    raise typer.Exit(session.report())


class BuildSession:
    """One `bbx build`: queue it, paint its steps, decide the exit code.

    `run(perspective, reactor, builder, wait)` is the conversation handed to client.call; it
    fires when the master reports the build finished (and not queued again), when the master
    goes away, or on a second Ctrl-C. `report()` prints the summary and returns the exit code.
    """

    def __init__(self, out, err, *, json: bool = False, show_secrets: bool = False,
                 verbose: bool = False):
        from .sinks import header_filter, make_sink

        self.out, self.err, self.json, self.show_secrets = out, err, json, show_secrets
        self.answer: dict | None = None
        self.started: dict | None = None
        self.finished: dict | None = None
        self.master_lost = False
        self.left = False
        self.sigints = 0
        self.wait = True
        self.sink = make_sink(out, err, json)
        self.verbose = verbose
        self.headers = header_filter(self.sink, verbose)
        self._build_since: float | None = None
        self._ticker = None
        self._queued_since: float | None = None
        self._why = ""
        self._step: tuple | None = None  # (number, name, started) of the running step

    async def run(self, perspective, reactor, builder: str, wait: bool):
        import signal

        from twisted.internet import defer

        self.wait = wait
        self.reactor = reactor
        self.perspective = perspective
        self.done = defer.Deferred()
        # Without waiting, the observer only hears whether the build starts at once.
        observer = _observer_class()(self)
        perspective.notifyOnDisconnect(lambda _: self._end(master_lost=True))
        if wait:
            signal.signal(signal.SIGINT, lambda s, f: reactor.callFromThread(self._sigint))
        self.answer = await perspective.callRemote("build", builder, observer, True)
        if not wait:
            if self.answer.get("position") is None and self.started is None:
                timer = reactor.callLater(NO_WAIT_BUILD_ID, self._end)
                await self.done
                if timer.active():
                    timer.cancel()
            return self.answer
        if self.answer.get("position") and not self.json and self.started is None:
            attached = self.answer.get("attached") or []
            why = ("its slaves are busy" if attached else "none of its slaves is attached")
            self._note(f"request {self.answer['request_id']} queued (position "
                       f"{self.answer['position']}; {why})")
            self._show_waiting(reactor, why)
        self._show_waiting(reactor, "")
        if self.sigints:
            self._cancel()
        await self.done
        return self.finished

    def _show_waiting(self, reactor, why: str) -> None:
        """On a terminal, a live line while the request waits (how long, and why) and then
        while each step runs (its name, time and output so far: a long transfer or a quiet
        compile shows that it is alive)."""
        from twisted.internet import task

        from .sinks import TerminalOutput

        if not isinstance(self.sink, TerminalOutput) or self._ticker is not None:
            return
        self._queued_since, self._why = reactor.seconds(), why
        self._ticker = task.LoopingCall(self._tick, reactor)
        self._ticker.clock = reactor
        self._ticker.start(WAITING_INTERVAL)

    def _tick(self, reactor) -> None:
        from rich.text import Text

        from .text import duration, human_bytes

        if self.done.called:
            self._ticker.stop()
            return
        now = reactor.seconds()
        if self.started is None and self._queued_since is not None:
            text = (f"⏳ waiting in the queue · {duration(now - self._queued_since)}"
                    f" · {self._why}")
        elif self._step is not None:
            from .render import build_status

            number, name, since = self._step
            total = len((self.started or {}).get("steps") or [])
            self.sink.status(build_status(number, total, name, now - (self._build_since or since),
                                          self.sink.nbytes))
            return
        else:
            return
        self.sink.status(Text(text, style="dim"))

    def _end(self, *, master_lost: bool = False, left: bool = False) -> None:
        self.master_lost = self.master_lost or master_lost
        self.left = self.left or left
        if not self.done.called:
            self.done.callback(None)

    def _sigint(self) -> None:
        self.sigints += 1
        if self.sigints == 1:
            self._note("cancelling the build (Ctrl-C again to leave at once)")
            self._cancel()
        else:
            self._end(left=True)

    def _cancel(self) -> None:
        if self.answer is None:
            return  # sent once `build` answers
        if self.started is not None:
            d = self.perspective.callRemote("cancel", self.started["build_id"])
        else:
            d = self.perspective.callRemote("cancel", None, self.answer["request_id"])
        d.addErrback(lambda f: self._note(f"could not cancel: {f.getErrorMessage()}"))

    def _note(self, text: str) -> None:
        from .sinks import note

        note(self.sink, self.err, text)

    # -- what the observer receives

    def build_started(self, info: dict) -> None:
        self.started = info
        self._build_since = self.reactor.seconds()
        if not self.wait:
            self._end()
            return
        if hasattr(self.sink, "clear_status"):
            self.sink.clear_status()
        if self.json:
            json_line({"event": "buildStarted", **info})
            return
        self._note(f"build {info['build_id']} (#{info['number']} of {info['builder']}) "
                   f"started on slave {info['slave']}")

    def step_started(self, info: dict) -> None:
        if not self.wait:
            return  # --no-wait: only the build id was wanted
        from .sinks import header_filter

        self._step = (info.get("number"), info.get("name"), self.reactor.seconds())
        self.headers = header_filter(self.sink, self.verbose)  # a new command's header
        if self.json:
            json_line({"event": "stepStarted", **info})
            return
        from .render import step_rule

        self.sink.section(step_rule(info))

    def step_finished(self, info: dict) -> None:
        if not self.wait:
            return  # --no-wait: only the build id was wanted
        self._step = None
        if hasattr(self.sink, "clear_status"):
            self.sink.clear_status()
        if self.json:
            json_line({"event": "stepFinished", **info})
            return
        if info.get("result_name") == "skipped":
            from .render import step_rule

            self.sink.section(step_rule(info))

    def build_finished(self, info: dict) -> None:
        if not self.wait:
            self._end()
            return
        if self.json:
            json_line({"event": "buildFinished", **info})
        if info.get("requeued"):
            self._note(f"build {info.get('build_id')} lost its slave (RETRY); request "
                       f"{info.get('request_id')} is queued again")
            self.started = None
            return
        self.finished = info
        self._end()

    def update(self, updates) -> None:
        if not self.wait:
            return  # --no-wait: only the build id was wanted
        from bbx.pb.updates import iter_updates

        from .render import mask_header

        if self.json:
            for key, value in iter_updates(updates):
                if key == "header" and isinstance(value, str):
                    value = mask_header(value, self.show_secrets)
                json_line({key: value})
            return
        from .sinks import paint_updates

        paint_updates(self.sink, updates, self.show_secrets, headers=self.headers)

    # -- the end

    def report(self) -> int:
        """Print the summary (table and line); return bbx's exit code."""
        if not self.wait:
            answer = dict(self.answer or {})
            if self.started is not None:
                answer["build_id"] = self.started.get("build_id")
            if self.json:
                print_json(answer)
            elif answer.get("build_id") is not None:
                self.out.print(f"queued build request {answer.get('request_id')}; started as "
                               f"build {answer['build_id']} on slave {self.started.get('slave')}",
                               highlight=False, markup=False)
            else:
                self.out.print(f"queued build request {answer.get('request_id')} "
                               f"(position {answer.get('position') or '—'}); `bbx log --request "
                               f"{answer.get('request_id')} --follow` shows its build",
                               highlight=False, markup=False)
            return 0
        info = self.finished
        if info is None:
            if self.master_lost:
                message, code = "lost the connection to the master; the build may go on", EXIT_LOST
            else:
                build_id = (self.started or {}).get("build_id")
                message = (f"left; build {build_id} may still be running (bbx cancel {build_id})"
                           if build_id else "left; the build request stays queued")
                code = EXIT_INTERRUPTED
            if self.json:
                json_line({"event": "end", "exit_code": code, "message": message})
            self.err.print(f"bbx: {message}", highlight=False, soft_wrap=True, markup=False)
            return code
        name = str(info.get("result_name"))
        code = 0 if name in GOOD_RESULTS else EXIT_BUILD_BAD
        if self.json:
            json_line({"event": "end", "exit_code": code, "result_name": name,
                   "build_id": info.get("build_id")})
            return code
        from .render import build_summary

        self.sink.finish(build_summary(info, code))
        return code


_OBSERVER = None


def _observer_class():
    """The pb.Referenceable the master calls with build events (defined late: Twisted is heavy)."""
    global _OBSERVER
    if _OBSERVER is None:
        from twisted.spread import pb

        class BuildObserver(pb.Referenceable):
            """The CLI's end of a build, handed to the master's `build`.

            The master calls buildStarted(info), stepStarted(info), update(updates) (the
            slave's envelopes, answered with None once painted: flow control),
            stepFinished(info) and buildFinished(info); each answered with None.
            """

            def __init__(self, session: BuildSession):
                self.session = session

            def remote_buildStarted(self, info):
                """A build for our request started: {"build_id", "number", "slave", ...}. Returns None."""
                self.session.build_started(info)

            def remote_stepStarted(self, info):
                """A step started: {"number", "name", "kind"}. Returns None."""
                self.session.step_started(info)

            def remote_update(self, updates):
                """Output of the running step, as the slave sent it; None once painted (flow control)."""
                self.session.update(updates)

            def remote_stepFinished(self, info):
                """A step ended: {"number", "name", "result_name", "rc", "duration"}. Returns None."""
                self.session.step_finished(info)

            def remote_buildFinished(self, info):
                """The build ended: {"result_name", "steps", "requeued", ...}. Returns None."""
                self.session.build_finished(info)

        _OBSERVER = BuildObserver
    return _OBSERVER
